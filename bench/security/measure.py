#!/usr/bin/env python3
"""Security measurements against a running `provisioner serve` on loopback (see docs/security.md).

  measure.py flood  --pid PID [--idle 20000 --half 1000 --slow 200 --orders 20]
  measure.py holds  [--each 150]          # hold times with no queueing (fewer sockets than the cap)
  measure.py guess  [--seconds 30 --conc 32]
  measure.py replay [--trials 20 --copies 10]

Secrets come from the environment: PROV_STOREFRONT_SECRET, PROV_ADMIN_TOKEN; PROV_API
(default 127.0.0.1:18080), PROV_PACKAGE (default 9). Output: one JSON document on stdout.
Only the Python 3 standard library; one process opens at most ~19,000 sockets (its fd limit), so
`flood` splits the idle sockets over child processes.
"""
import argparse, asyncio, hashlib, hmac, json, os, re, secrets, socket, statistics, subprocess, sys, time

API = os.environ.get("PROV_API", "127.0.0.1:18080")
HOST, PORT = API.split(":")[0], int(API.split(":")[1])
SF = os.environ.get("PROV_STOREFRONT_SECRET", "")
ADMIN = os.environ.get("PROV_ADMIN_TOKEN", "")
PACKAGE = int(os.environ.get("PROV_PACKAGE", "9"))
# The flood's orders: spread over the simulator's active packages with stock, except 5 (slow).
ORDER_PACKAGES = [int(p) for p in os.environ.get("PROV_ORDER_PACKAGES", "7,9,12,14").split(",")]


def sign(secret: str, t: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), str(t).encode() + b"." + body, hashlib.sha256)
    return f"t={t},v1={mac.hexdigest()}"


def dist(xs):
    xs = sorted(xs)
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "min": round(xs[0], 2), "median": round(statistics.median(xs), 2),
            "p99": round(xs[int(0.99 * (len(xs) - 1))], 2), "max": round(xs[-1], 2)}


# ---- a minimal keep-alive HTTP/1.1 client on asyncio streams ---------------------------------

class Conn:
    def __init__(self, src=None):
        self.src, self.r, self.w = src, None, None

    async def open(self, timeout=300):
        la = (self.src, 0) if self.src else None
        self.r, self.w = await asyncio.wait_for(
            asyncio.open_connection(HOST, PORT, local_addr=la), timeout)

    async def request(self, method, path, headers=None, body=b"", timeout=300):
        for attempt in (0, 1):
            if self.w is None:
                await self.open(timeout)
            h = {"Host": API, "Content-Length": str(len(body))}
            h.update(headers or {})
            head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
            try:
                self.w.write(head.encode() + body)
                await self.w.drain()
                return await asyncio.wait_for(self._response(), timeout)
            except (ConnectionError, asyncio.IncompleteReadError, EOFError):
                self.close()
                if attempt:
                    raise

    async def _response(self):
        line = await self.r.readline()
        if not line:
            raise EOFError
        status = int(line.split()[1])
        hdrs = {}
        while True:
            l = await self.r.readline()
            if l in (b"\r\n", b""):
                break
            k, _, v = l.decode().partition(":")
            hdrs[k.strip().lower()] = v.strip()
        n = int(hdrs.get("content-length", "0"))
        body = await self.r.readexactly(n) if n else b""
        if hdrs.get("connection", "").lower() == "close":
            self.close()
        return status, hdrs, body

    def close(self):
        if self.w:
            self.w.close()
        self.r = self.w = None


def order_body(ref, package=None):
    return json.dumps({"order_ref": ref, "package": package or PACKAGE, "ram_gb": 2,
                       "customer": {"email": "c@example.com", "name": "C"}}).encode()


async def post_order(body, src=None, timeout=300):
    c = Conn(src)
    try:
        return await c.request("POST", "/api/v1/orders", {
            "Content-Type": "application/json",
            "Provisioner-Signature": sign(SF, int(time.time()), body)}, body, timeout)
    finally:
        c.close()


# ---- flood ---------------------------------------------------------------------------------

async def hold(kind, src, out, t0, stop):
    """One flood socket: connect, behave as `kind`, record when the server closed it."""
    rec = {"kind": kind}
    s0 = time.monotonic()
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(HOST, PORT, local_addr=(src, 0)), 300)
    except Exception as e:
        rec["connect_error"] = type(e).__name__
        out.append(rec)
        return
    rec["connect_s"] = time.monotonic() - s0
    c = time.monotonic()
    try:
        if kind == "half":
            w.write(b"POST /api/v1/orders HTTP/1.1\r\nHost: x\r\nContent-Type: appl")
            await w.drain()
        elif kind == "slow":
            w.write(b"POST /api/v1/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 1000\r\n\r\n")
            await w.drain()
        async def trickle():
            while True:
                await asyncio.sleep(5)
                w.write(b"{")
                await w.drain()
        tr = asyncio.ensure_future(trickle()) if kind == "slow" else None
        rd = asyncio.ensure_future(r.read(65536))
        st = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({rd, st}, return_when=asyncio.FIRST_COMPLETED)
        if tr:
            tr.cancel()
        if rd in done:
            rec["held_s"] = time.monotonic() - c            # connect completed -> server closed
            rec["closed_at"] = time.monotonic() - t0
            try:
                rec["reply"] = rd.result()[:12].decode(errors="replace")
            except Exception as e:
                rec["reply"] = type(e).__name__
        else:
            rd.cancel()
            rec["still_open"] = True
        st.cancel()
    except Exception as e:
        rec["held_s"] = time.monotonic() - c
        rec["closed_at"] = time.monotonic() - t0
        rec["reply"] = type(e).__name__
    finally:
        w.close()
    out.append(rec)


async def flood_part(counts, srcs, duration, t0=None):
    out, stop = [], asyncio.Event()
    t0 = t0 or time.monotonic()
    tasks, i = [], 0
    for kind, n in counts:
        for _ in range(n):
            tasks.append(asyncio.ensure_future(hold(kind, srcs[i % len(srcs)], out, t0, stop)))
            i += 1
            if i % 500 == 0:
                await asyncio.sleep(0)
    await asyncio.sleep(duration)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return out


def summarize(recs):
    res = {}
    for kind in ("idle", "half", "slow"):
        rs = [r for r in recs if r["kind"] == kind]
        if not rs:
            continue
        replies = {}
        for r in rs:
            if "reply" in r:
                replies[r["reply"][:12] or "EOF"] = replies.get(r["reply"][:12] or "EOF", 0) + 1
        res[kind] = {"sockets": len(rs),
                     "connect_errors": sum(1 for r in rs if "connect_error" in r),
                     "connect_s": dist([r["connect_s"] for r in rs if "connect_s" in r]),
                     "held_s": dist([r["held_s"] for r in rs if "held_s" in r]),
                     "still_open_at_end": sum(1 for r in rs if r.get("still_open")),
                     "replies": replies}
    return res


def child_main(args):
    recs = asyncio.run(flood_part([("idle", args.n)], args.srcs.split(","), args.duration))
    json.dump(recs, sys.stdout)


def fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


async def metrics_gauge():
    c = Conn("127.0.0.9")
    try:
        s0 = time.monotonic()
        st, _, body = await c.request("GET", "/metrics", timeout=120)
        m = re.search(rb"^provisioner_http_connections (\S+)", body, re.M)
        return float(m.group(1)) if m else None, time.monotonic() - s0
    except Exception:
        return None, None
    finally:
        c.close()


def accept_queue():
    out = subprocess.run(["ss", "-Hltn", f"sport = :{PORT}"], capture_output=True, text=True).stdout.split()
    return int(out[1]) if len(out) > 2 else None


KIND_OF_SRC = {"127.0.2.1": "slow", "127.0.2.2": "half", "127.0.0.1": "orders", "127.0.0.9": "metrics"}


def server_sockets(pid):
    """inode -> peer IP of the server's accepted sockets (port PORT) in /proc/net/tcp."""
    peers = {}
    with open(f"/proc/{pid}/net/tcp") as f:
        next(f)
        for line in f:
            p = line.split()
            if p[1].endswith(f":{PORT:04X}") and not p[2].endswith(":0000"):
                ip = socket.inet_ntoa(bytes.fromhex(p[2].split(":")[0])[::-1])
                peers[p[9]] = ip
    return peers


def fd_sockets(pid):
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                l = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if l.startswith("socket:["):
                out.add(l[8:-1])
    except OSError:
        pass
    return out


async def monitor(pid, t0, stop, samples):
    """Also tracks every accepted socket in the server's fd table: first and last time seen."""
    seen = samples["server_held"] = {}          # inode -> [kind, first, last]
    async def gauge_loop():
        while not stop.is_set():
            g, lat = await metrics_gauge()
            samples["gauge"].append((round(time.monotonic() - t0, 1), g, lat and round(lat, 2)))
            await asyncio.sleep(1)
    gl = asyncio.ensure_future(gauge_loop())
    while not stop.is_set():
        now = time.monotonic() - t0
        socks = fd_sockets(pid)
        new = [i for i in socks if i not in seen]
        if new:
            peers = server_sockets(pid)
            for i in new:
                if i in peers:
                    ip = peers[i]
                    seen[i] = [KIND_OF_SRC.get(ip, "idle" if ip.startswith("127.0.1") else "other"), now, now]
        for i in socks:
            if i in seen:
                seen[i][2] = now
        samples["fds"].append((round(now, 1), fds(pid), accept_queue()))
        await asyncio.sleep(0.5)
    gl.cancel()


async def orders_during_flood(n, t0, deadline):
    res = {"post": [], "ready": {}}
    async def one(i):
        body = order_body(f"flood-{int(time.time())}-{i}", ORDER_PACKAGES[i % len(ORDER_PACKAGES)])
        s0, errors = time.monotonic(), []
        while time.monotonic() - t0 < deadline:      # a storefront retries its webhook
            try:
                st, _, b = await post_order(body, src="127.0.0.1", timeout=deadline)
                res["post"].append({"status": st, "s": time.monotonic() - s0, "errors": errors,
                                    "id": json.loads(b).get("id") if st < 300 else None})
                return
            except Exception as e:
                errors.append(f"{type(e).__name__} after {time.monotonic() - s0:.0f}s")
        res["post"].append({"status": "gave up", "s": time.monotonic() - s0, "errors": errors})
    await asyncio.gather(*(one(i) for i in range(n)))
    ids = [p["id"] for p in res["post"] if p.get("id")]
    admin = Conn("127.0.0.1")
    pending = set(ids)
    while pending and time.monotonic() - t0 < deadline:
        for oid in sorted(pending):
            try:
                st, _, b = await admin.request("GET", f"/api/v1/orders/{oid}", {"Authorization": f"Bearer {ADMIN}"}, timeout=120)
            except Exception:
                admin.close()
                continue
            o = json.loads(b)
            if o.get("state") in ("ready", "failed", "needs_attention", "cancelled"):
                pending.discard(oid)
                res["ready"][oid] = {"state": o["state"], "attempts": o.get("attempts"),
                                     "ready_after_s": round(time.monotonic() - t0, 1)}
        await asyncio.sleep(2)
    for oid in pending:
        st, _, b = await admin.request("GET", f"/api/v1/orders/{oid}", {"Authorization": f"Bearer {ADMIN}"})
        o = json.loads(b)
        res["ready"][oid] = {"state": o.get("state"), "attempts": o.get("attempts"), "ready_after_s": None}
    admin.close()
    return res


async def flood_main(args):
    t0 = time.monotonic()
    per_child = 9000
    kids, left, k = [], args.idle, 0
    # The half-header and slow-body sockets go first, then the idle ones (child processes).
    stop = asyncio.Event()
    samples = {"fds": [], "gauge": []}
    mon = asyncio.ensure_future(monitor(args.pid, t0, stop, samples))
    slow = asyncio.ensure_future(flood_part([("slow", args.slow)], ["127.0.2.1"], args.duration, t0))
    half = asyncio.ensure_future(flood_part([("half", args.half)], ["127.0.2.2"], args.duration, t0))
    await asyncio.sleep(1)
    while left > 0:
        n = min(per_child, left)
        srcs = ",".join(f"127.0.{100 + k}.{j}" for j in range(1, 3))
        kids.append(await asyncio.create_subprocess_exec(
            sys.executable, __file__, "child", "--n", str(n), "--srcs", srcs,
            "--duration", str(args.duration - 1), stdout=asyncio.subprocess.PIPE))
        left -= n
        k += 1
    await asyncio.sleep(2)
    orders = await orders_during_flood(args.orders, t0, args.duration + 300)
    recs = await slow + await half
    for p in kids:
        out, _ = await p.communicate()
        recs += json.loads(out)
    await asyncio.sleep(1)
    stop.set()
    await mon
    held = {}
    for kind, first, last in samples["server_held"].values():
        if last < samples["fds"][-1][0] - 1:          # closed while we watched (0.5 s sampling)
            held.setdefault(kind, []).append(last - first)
    limits = open(f"/proc/{args.pid}/limits").read()
    lim = re.search(r"Max open files\s+(\d+)", limits).group(1)
    fd_vals = [f for _, f, _ in samples["fds"] if f is not None]
    gauges = [g for _, g, _ in samples["gauge"] if g is not None]
    atts = [(o["attempts"] or {}).get("buy") for o in orders["ready"].values()]
    print(json.dumps({
        "server_fd_limit": int(lim), "server_fds_peak": max(fd_vals), "server_fds_start": fd_vals[0],
        "gauge_peak": max(gauges) if gauges else None,
        "metrics_latency_s": dist([l for _, _, l in samples["gauge"] if l]),
        "accept_queue_peak": max((q for _, _, q in samples["fds"] if q is not None), default=None),
        "server_held_s": {k: dist(v) for k, v in sorted(held.items())},
        "server_accepted": {k: sum(1 for v in samples["server_held"].values() if v[0] == k)
                            for k in ("idle", "half", "slow", "orders", "metrics", "other")},
        "client_view": summarize(recs),
        "orders_posted": dist([p["s"] for p in orders["post"]]),
        "post_statuses": sorted(set(str(p["status"]) for p in orders["post"])),
        "post_connect_errors": sum(len(p["errors"]) for p in orders["post"]),
        "orders_ready": sum(1 for o in orders["ready"].values() if o["state"] == "ready"),
        "buy_attempts": atts,
        "ready_after_s": dist([o["ready_after_s"] for o in orders["ready"].values() if o["ready_after_s"]]),
        "orders": orders,
        "timeline": {"fds": samples["fds"][::4], "gauge": samples["gauge"][::2]},
    }, indent=1))


async def holds_main(args):
    t0 = time.monotonic()
    recs = await flood_part([("idle", args.each), ("half", args.each), ("slow", args.each)],
                            ["127.0.3.1"], args.duration, t0)
    print(json.dumps(summarize(recs), indent=1))


# ---- guessing ------------------------------------------------------------------------------

async def guess_one(kind, src, seconds, conc, oid=None):
    counts, t_first_429 = {}, None
    t0 = time.monotonic()
    log = []
    async def worker():
        nonlocal t_first_429
        c = Conn(src)
        while time.monotonic() - t0 < seconds:
            if kind == "admin":
                st, _, _ = await c.request("GET", "/api/v1/orders", {"Authorization": f"Bearer {secrets.token_hex(16)}"})
            elif kind == "customer":
                st, _, _ = await c.request("GET", f"/api/v1/orders/{oid}/credentials",
                                           {"Authorization": f"Bearer {secrets.token_urlsafe(24)}"})
            else:
                body = order_body("guess-" + secrets.token_hex(4))
                st, _, _ = await c.request("POST", "/api/v1/orders", {
                    "Content-Type": "application/json",
                    "Provisioner-Signature": f"t={int(time.time())},v1={secrets.token_hex(32)}"}, body)
            now = time.monotonic() - t0
            counts[st] = counts.get(st, 0) + 1
            log.append((now, st))
            if st == 429 and t_first_429 is None:
                t_first_429 = now
        c.close()
    await asyncio.gather(*(worker() for _ in range(conc)))
    el = time.monotonic() - t0
    n401 = counts.get(401, 0)
    first = [s for t, s in log if t_first_429 is None or t <= t_first_429]
    after = [s for t, s in log if t_first_429 is not None and t > t_first_429]
    span_after = el - (t_first_429 or el)
    return {"kind": kind, "seconds": round(el, 1), "concurrency": conc, "statuses": counts,
            "requests_per_s": round(sum(counts.values()) / el),
            "checked_401_per_s": round(n401 / el, 2),
            "burst_401_before_first_429": first.count(401),
            "first_429_at_s": t_first_429 and round(t_first_429, 3),
            "steady_401": after.count(401),
            "t_401_after_burst": [round(t, 3) for t, st in log if st == 401 and t_first_429 is not None and t > t_first_429],
            "steady_401_per_min": round(after.count(401) / span_after * 60, 2) if span_after > 0 else None}


async def guess_main(args):
    # A real order to aim customer-token guesses at.
    st, _, b = await post_order(order_body(f"target-{time.time()}"), src="127.0.0.1")
    oid = json.loads(b)["id"]
    res = []
    for i, kind in enumerate(("admin", "customer", "storefront")):
        if kind not in args.kinds.split(","):
            continue
        res.append(await guess_one(kind, f"127.0.4.{i + 1}", args.seconds, args.conc, oid))
    print(json.dumps(res, indent=1))


# ---- replay --------------------------------------------------------------------------------

async def replay_main(args):
    trials = []
    for trial in range(args.trials):
        body = order_body(f"replay-{int(time.time())}-{trial}")
        sig = sign(SF, int(time.time()), body)
        async def post():
            c = Conn("127.0.5.1")
            try:
                return await c.request("POST", "/api/v1/orders", {
                    "Content-Type": "application/json", "Provisioner-Signature": sig}, body)
            finally:
                c.close()
        answers = await asyncio.gather(*(post() for _ in range(args.copies)))
        statuses = [a[0] for a in answers]
        docs = [json.loads(a[2]) for a in answers]
        tokens = {d.get("access_token") for d in docs}
        ids = {d.get("id") for d in docs}
        works = []
        for d in docs:
            c = Conn("127.0.5.2")
            st, _, _ = await c.request("GET", f"/api/v1/orders/{d.get('id')}", {"Authorization": f"Bearer {d.get('access_token')}"})
            c.close()
            works.append(st)
        trials.append({"statuses": sorted(statuses), "distinct_tokens": len(tokens), "distinct_ids": len(ids),
                       "token_checks": sorted(works)})
    ok = sum(1 for t in trials if t["distinct_tokens"] == 1 and t["distinct_ids"] == 1
             and all(s == 200 for s in t["token_checks"]) and t["statuses"].count(201) == 1)
    print(json.dumps({"trials": len(trials), "all_same_working_token": ok,
                      "detail": [json.dumps(t) for t in trials]}, indent=1))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("flood"); f.add_argument("--pid", type=int, required=True)
    f.add_argument("--idle", type=int, default=20000); f.add_argument("--half", type=int, default=1000)
    f.add_argument("--slow", type=int, default=200); f.add_argument("--orders", type=int, default=20)
    f.add_argument("--duration", type=float, default=240)
    h = sub.add_parser("holds"); h.add_argument("--each", type=int, default=150); h.add_argument("--duration", type=float, default=90)
    g = sub.add_parser("guess"); g.add_argument("--seconds", type=float, default=30); g.add_argument("--conc", type=int, default=32)
    g.add_argument("--kinds", default="admin,customer,storefront")
    r = sub.add_parser("replay"); r.add_argument("--trials", type=int, default=20); r.add_argument("--copies", type=int, default=10)
    c = sub.add_parser("child"); c.add_argument("--n", type=int); c.add_argument("--srcs"); c.add_argument("--duration", type=float)
    args = ap.parse_args()
    if args.cmd == "child":
        return child_main(args)
    asyncio.run({"flood": flood_main, "holds": holds_main, "guess": guess_main, "replay": replay_main}[args.cmd](args))


if __name__ == "__main__":
    main()
