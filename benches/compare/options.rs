//! The command line of the compare bench: which rows run, how many rounds
//! of how many seconds.

use super::IDLE_CLIENTS;

pub struct Options {
    pub quick: bool,
    pub rounds: u32,
    pub seconds: u32,
    pub idle: bool,
    pub pgbench: bool,
    pub floods: bool,
    /// Run the TLS rows.
    pub tls: bool,
    /// Only the workloads with TLS rows, and of their plain rows only those
    /// against the primary.
    pub tls_only: bool,
    /// Only the workers axis: its select and -C workloads, no TLS rows.
    pub workers_only: bool,
    /// The proxy-bound rows (a synthetic server).
    pub proxy_bound: bool,
    pub idle_clients: usize,
    pub idle_rounds: usize,
    /// Only the read-your-writes rows (write on rw, then read on ro).
    pub ryw_only: bool,
}

const USAGE: &str = "usage: cargo bench --bench compare [-- [--quick] [--rounds N] [--seconds N] \
                     [--idle-clients N] [--idle-rounds N] [--skip-idle] [--skip-pgbench] [--skip-floods] [--skip-tls] \
                     [--tls-only] [--workers-only] [--proxy-bound-only] [--skip-proxy-bound] [--floods-only] [--ryw-only]]";

pub fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        quick: false,
        rounds: 3,
        seconds: 5,
        idle: true,
        pgbench: true,
        floods: true,
        tls: true,
        tls_only: false,
        workers_only: false,
        proxy_bound: true,
        idle_clients: IDLE_CLIENTS,
        idle_rounds: 2,
        ryw_only: false,
    };
    let (mut rounds, mut seconds) = (None, None);
    let (mut floods_only, mut proxy_bound_only) = (false, false);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |what: &str| -> Result<u64, String> {
            args.next().and_then(|v| v.parse().ok()).ok_or(format!("{what} needs a number\n{USAGE}"))
        };
        match arg.as_str() {
            "--quick" => o.quick = true,
            "--rounds" => rounds = Some(number("--rounds")?.max(1) as u32),
            "--seconds" => seconds = Some(number("--seconds")?.max(1) as u32),
            "--idle-clients" => o.idle_clients = number("--idle-clients")?.max(1) as usize,
            "--idle-rounds" => o.idle_rounds = number("--idle-rounds")?.max(1) as usize,
            "--skip-idle" => o.idle = false,
            "--skip-pgbench" => o.pgbench = false,
            "--skip-floods" => o.floods = false,
            "--floods-only" => floods_only = true,
            "--skip-tls" => o.tls = false,
            "--tls-only" => o.tls_only = true,
            "--workers-only" => o.workers_only = true,
            "--proxy-bound-only" => proxy_bound_only = true,
            "--ryw-only" => o.ryw_only = true,
            "--skip-proxy-bound" => o.proxy_bound = false,
            // cargo bench passes --bench to every bench binary.
            "--bench" => {}
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if o.quick {
        (o.rounds, o.seconds) = (1, 3);
    }
    o.rounds = rounds.unwrap_or(o.rounds);
    o.seconds = seconds.unwrap_or(o.seconds);
    if floods_only {
        if !o.floods {
            return Err(format!("--floods-only and --skip-floods leave nothing to run\n{USAGE}"));
        }
        (o.pgbench, o.idle, o.proxy_bound) = (false, false, false);
    }
    if o.quick && !proxy_bound_only {
        // Kept short: the proxy-bound rows only when asked for.
        o.proxy_bound = false;
    }
    if o.tls_only {
        if !o.tls || !o.pgbench || floods_only {
            return Err(format!("--tls-only goes with neither --skip-tls, --skip-pgbench nor --floods-only\n{USAGE}"));
        }
        (o.idle, o.floods, o.proxy_bound) = (false, false, false);
    }
    let only = [o.tls_only, o.workers_only, floods_only, proxy_bound_only, o.ryw_only];
    if only.iter().filter(|&&x| x).count() > 1 {
        return Err(format!(
            "pick one of --tls-only, --workers-only, --floods-only, --proxy-bound-only, --ryw-only\n{USAGE}"
        ));
    }
    if o.workers_only {
        (o.tls, o.idle, o.floods, o.proxy_bound) = (false, false, false, false);
    }
    if proxy_bound_only {
        if !o.proxy_bound {
            return Err(format!("--proxy-bound-only and --skip-proxy-bound leave nothing to run\n{USAGE}"));
        }
        (o.pgbench, o.idle, o.floods, o.tls) = (false, false, false, false);
    }
    Ok(o)
}
