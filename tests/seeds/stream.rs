//! The stream seed: `Pipeline::from_source(..).map(..).filter(..).sink(..).run()`.

// The alias prelude: the seed's module paths.
use grafos_worker::stream::Pipeline;

use std::sync::{Arc, Mutex};

use crate::SeedResult;

pub fn pipeline_runs_as_threads() -> SeedResult {
    let stored = Arc::new(Mutex::new(Vec::new()));
    let sink = stored.clone();
    let report = Pipeline::from_source((0..10_000u32).map(|i| format!("event-{i}")))
        .map(|event: String| event.replace("event", "parsed"))
        .filter(|event: &String| !event.ends_with('7'))
        .sink(move |event: String| {
            sink.lock().unwrap().push(event);
            Ok(())
        })
        .run()?;
    let stored = stored.lock().unwrap();
    let expected: Vec<String> = (0..10_000u32)
        .map(|i| format!("parsed-{i}"))
        .filter(|e| !e.ends_with('7'))
        .collect();
    assert_eq!(*stored, expected, "every item, in order, once");
    assert_eq!(
        (report.sourced, report.sunk, report.filtered),
        (10_000, 9_000, 1_000)
    );
    Ok(())
}
