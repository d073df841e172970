// Reads run.sh's JSON lines on stdin and prints one table: the median of each system's runs,
// with the load average (1 min) before each run.
import fs from "node:fs";

const runs = fs.readFileSync(0, "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l));
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)] : NaN;
};
const f = (x, d = 0) => (Number.isFinite(x) ? x.toFixed(d) : "-");
console.log("| system | runs | load before each | orders/s (median) | commits per order | CPU ms/order: process + backends |");
console.log("|---|---:|---|---:|---:|---:|");
for (const system of ["provisioner", "graphile", "pgboss"]) {
  const mine = runs.filter((r) => r.system === system);
  if (!mine.length) continue;
  const commits = system === "provisioner"
    ? `${f(median(mine.map((r) => r.write_commits_per_order)), 2)} (write, counted)`
    : `${f(median(mine.map((r) => r.commits_per_order)), 2)} (all, pg_stat_database)`;
  console.log(
    `| ${system} | ${mine.length} | ${mine.map((r) => r.load).join(", ")} | ${f(median(mine.map((r) => r.orders_per_s)))} (${mine.map((r) => f(r.orders_per_s)).join(", ")}) | ${commits} | ${f(median(mine.map((r) => r.cpu_ms_per_order_process)), 2)} + ${f(median(mine.map((r) => r.cpu_ms_per_order_backends)), 2)} |`,
  );
}
