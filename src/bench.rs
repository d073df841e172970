//! `provisioner bench strategies` (filled in with the deterministic simulation).

/// Placeholder until the simulation harness lands in this module.
///
/// # Errors
/// Never yet.
pub async fn strategies(_orders: usize, _seed: u64) -> anyhow::Result<()> {
    anyhow::bail!("bench strategies is not built yet")
}
