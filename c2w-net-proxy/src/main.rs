//! The native runner: `c2w-net-proxy --tap NAME` or `--qemu-listen ADDR` (see `--help`).

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    c2w_net_proxy::native::main()
}

#[cfg(target_arch = "wasm32")]
fn main() {}
