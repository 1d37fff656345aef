//! A worker for `grafos run` topologies in the tests: this test binary
//! started with `GRAFOS_TEST_PEER=worker` and one of
//!
//! * `serve EVENTS`: appends `start ID PID` to the file EVENTS, runs until
//!   SIGTERM (a `Drain`), appends `drained ID`, exits 0;
//! * `exit CODE MS`: exits with CODE after MS milliseconds.

use std::io::Write;
use std::time::Duration;

use grafos_worker::drain::{Drain, worker_id};

fn append(path: &str, line: &str) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("events file opens");
    // One write per line: O_APPEND keeps lines of several processes whole.
    file.write_all(format!("{line}\n").as_bytes())
        .expect("events file takes a line");
}

pub fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let id = worker_id().expect("GRAFOS_WORKER_ID is set");
    match args.first().map(String::as_str) {
        Some("serve") => {
            let drain = Drain::install().expect("drain hook");
            append(&args[1], &format!("start {id} {}", std::process::id()));
            while !drain.requested() {
                std::thread::sleep(Duration::from_millis(5));
            }
            append(&args[1], &format!("drained {id}"));
        }
        Some("exit") => {
            std::thread::sleep(Duration::from_millis(args[2].parse().expect("ms")));
            std::process::exit(args[1].parse().expect("code"));
        }
        other => panic!("unknown worker role {other:?}"),
    }
}
