//! Long-running network roles (broker, gateway, dashboard) refuse to run as root unless asked:
//! the appliance runs them as the unprivileged `aiot` user, with privileged ports granted by an
//! ambient CAP_NET_BIND_SERVICE, so a parser bug does not hand an attacker the device.
//! One-shot and loopback-only commands (`demo`, `node`, `bench`, `config`, `keys`) are exempt:
//! they accept no connections from the network, and a newcomer's first `cargo run -- demo` as
//! root must work.

/// The environment variable that, set (to anything but 0/false/no/off), allows root.
pub const ALLOW_ROOT_ENV: &str = "AIOT_ALLOW_ROOT";

/// Fails with an explanation when running as root without `--allow-root` (or its variable).
pub fn refuse_unless_allowed(role: &str, allow_root: bool) -> anyhow::Result<()> {
    if allow_root || !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    anyhow::bail!(
        "refusing to run the {role} as root: run it as an unprivileged user (the \
         aiot-gateway.service unit runs it as `aiot`, with CAP_NET_BIND_SERVICE for ports \
         below 1024), or pass --allow-root (or set {ALLOW_ROOT_ENV}=1) if you really mean it"
    )
}
