//! `tracing` to the browser console: a minimal global subscriber of our own.
//!
//! Events become one `console.error/warn/info/log/debug` line each (`target: message k=v`);
//! spans are not recorded. Written here rather than pulling `tracing-wasm`/`tracing-web`:
//! those bring `tracing-subscriber`'s registry and span bookkeeping (and `performance.mark`
//! calls), all unused by a proxy that only logs events, for tens of KiB of wasm. The level is
//! a global that each `NetProxy.create` with a `logLevel` updates, so it works even though only
//! one subscriber can ever be installed.

use std::fmt::{self, Write};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Once;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};
use wasm_bindgen::prelude::*;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = console, js_name = error)]
    fn console_error(s: &str);
    #[wasm_bindgen(js_namespace = console, js_name = warn)]
    fn console_warn(s: &str);
    #[wasm_bindgen(js_namespace = console, js_name = info)]
    fn console_info(s: &str);
    #[wasm_bindgen(js_namespace = console, js_name = log)]
    fn console_log(s: &str);
    #[wasm_bindgen(js_namespace = console, js_name = debug)]
    fn console_debug(s: &str);
}

pub use crate::options::LogLevel as Level;

/// The console level of a tracing level.
fn level_of(level: &tracing::Level) -> Level {
    match *level {
        tracing::Level::ERROR => Level::Error,
        tracing::Level::WARN => Level::Warn,
        tracing::Level::INFO => Level::Info,
        tracing::Level::DEBUG => Level::Debug,
        tracing::Level::TRACE => Level::Trace,
    }
}

static MAX_LEVEL: AtomicU8 = AtomicU8::new(Level::Warn as u8);
static INSTALL: Once = Once::new();

/// Installs the console subscriber (once per module instance; a global subscriber someone
/// else installed first is left alone) and sets the level.
pub fn init(level: Level) {
    MAX_LEVEL.store(level as u8, Ordering::Relaxed);
    INSTALL.call_once(|| {
        let _ = tracing::subscriber::set_global_default(ConsoleSubscriber);
    });
}

struct ConsoleSubscriber;

impl Subscriber for ConsoleSubscriber {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> tracing::subscriber::Interest {
        // The level can change at run time, so never let tracing cache a decision.
        tracing::subscriber::Interest::sometimes()
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.is_event() && level_of(metadata.level()) as u8 <= MAX_LEVEL.load(Ordering::Relaxed)
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let metadata = event.metadata();
        let mut line = Line {
            message: String::new(),
            fields: String::new(),
        };
        event.record(&mut line);
        let text = format!("{}: {}{}", metadata.target(), line.message, line.fields);
        match level_of(metadata.level()) {
            Level::Error => console_error(&text),
            Level::Warn => console_warn(&text),
            Level::Info => console_info(&text),
            Level::Debug => console_log(&text),
            Level::Trace => console_debug(&text),
        }
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// Collects an event's message and fields.
struct Line {
    message: String,
    fields: String,
}

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={}", field.name(), value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={:?}", field.name(), value);
        }
    }
}
