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

/// A stage that fails calls the others off: `run` returns its error
/// instead of waiting for ever.
pub fn a_failing_stage_ends_the_run() -> SeedResult {
    let result = Pipeline::from_source((0..100_000u32).map(|i| format!("event-{i}")))
        .map(|event: String| event)
        .sink(|event: String| {
            if event == "event-500" {
                return Err(grafos_worker::FabricError::IoError(5));
            }
            Ok(())
        })
        .run();
    match result {
        Err(grafos_worker::FabricError::IoError(5)) => Ok(()),
        other => Err(format!("expected the sink's error, got {other:?}").into()),
    }
}
