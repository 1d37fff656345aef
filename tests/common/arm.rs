//! Crash-point arming for peer processes: `POINT:HIT` kills the process
//! (SIGKILL to itself) the HIT-th time it reaches crash point POINT;
//! `POINT:HIT:stop` stops it there instead (SIGSTOP).

use grafos_shm_layout::crash::{self, CrashPoint};

/// Arms this process as `arm` says (see the module docs).
///
/// # Panics
/// On a malformed `arm`.
pub fn arm_crash(arm: &str) {
    static ARMED: std::sync::OnceLock<(CrashPoint, u64)> = std::sync::OnceLock::new();
    static HITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let (point, rest) = arm.split_once(':').expect("POINT:HIT[:stop]");
    let (hit, stop) = match rest.split_once(':') {
        Some((hit, "stop")) => (hit, true),
        _ => (rest, false),
    };
    STOP.store(stop, std::sync::atomic::Ordering::Relaxed);
    let _ = ARMED.set((
        CrashPoint::from_name(point).expect("a crash point"),
        hit.parse().unwrap(),
    ));
    fn hook(at: CrashPoint) {
        let (point, hit) = ARMED.get().copied().expect("armed");
        if at == point && HITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 == hit {
            let signal = if STOP.load(std::sync::atomic::Ordering::Relaxed) {
                rustix::process::Signal::STOP
            } else {
                rustix::process::Signal::KILL
            };
            let _ = rustix::process::kill_process(rustix::process::getpid(), signal);
        }
    }
    crash::set_hook(hook);
}
