//! Metric families with labelled series, rendered in the Prometheus text format (0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

#[derive(Debug)]
struct Family {
    help: &'static str,
    kind: Kind,
    /// Rendered label set (`{a="b"}` or empty) -> value. BTreeMap: stable output order.
    series: BTreeMap<String, f64>,
}

/// Thread-safe set of metric families. Series are created on first use; families must be
/// described first so every exported metric has HELP and TYPE lines.
#[derive(Debug, Default)]
pub struct Registry {
    families: Mutex<BTreeMap<&'static str, Family>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares a family; a family without series still renders its HELP/TYPE lines.
    pub fn describe(&self, name: &'static str, kind: Kind, help: &'static str) {
        self.with(|families| {
            families.entry(name).or_insert_with(|| Family {
                help,
                kind,
                series: BTreeMap::new(),
            });
        });
    }

    /// Adds `by` to a counter (or gauge) series.
    pub fn add(&self, name: &'static str, labels: &[(&str, &str)], by: f64) {
        let key = render_labels(labels);
        self.with(|families| {
            if let Some(f) = families.get_mut(name) {
                *f.series.entry(key).or_insert(0.0) += by;
            }
        });
    }

    pub fn inc(&self, name: &'static str, labels: &[(&str, &str)]) {
        self.add(name, labels, 1.0);
    }

    /// Sets a gauge series.
    pub fn set(&self, name: &'static str, labels: &[(&str, &str)], value: f64) {
        let key = render_labels(labels);
        self.with(|families| {
            if let Some(f) = families.get_mut(name) {
                f.series.insert(key, value);
            }
        });
    }

    /// Drops every series of a gauge family whose labels contain `label="value"` (a pool
    /// that was deleted should not linger in the output).
    pub fn remove_matching(&self, name: &'static str, label: &str, value: &str) {
        let needle = format!("{label}=\"{}\"", escape(value));
        self.with(|families| {
            if let Some(f) = families.get_mut(name) {
                f.series.retain(|k, _| !k.contains(&needle));
            }
        });
    }

    /// The value of one series, for tests and for status reporting.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let key = render_labels(labels);
        self.with(|families| families.get(name)?.series.get(&key).copied())
    }

    pub fn render(&self) -> String {
        self.with(|families| {
            let mut out = String::new();
            for (name, f) in families.iter() {
                let kind = match f.kind {
                    Kind::Counter => "counter",
                    Kind::Gauge => "gauge",
                };
                let _ = writeln!(out, "# HELP {name} {}", f.help);
                let _ = writeln!(out, "# TYPE {name} {kind}");
                for (labels, value) in &f.series {
                    let _ = writeln!(out, "{name}{labels} {value}");
                }
            }
            out
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<&'static str, Family>) -> T) -> T {
        // A panic while holding the lock cannot leave a family half-written (every update
        // is a single insert), so a poisoned lock is safe to keep using.
        let mut guard = self
            .families
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    }
}

fn render_labels(labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", parts.join(","))
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_help_type_and_sorted_series() {
        let r = Registry::new();
        r.describe(
            "herald_failures_total",
            Kind::Counter,
            "Failures by reason.",
        );
        r.describe("herald_idle", Kind::Gauge, "Never set.");
        r.inc("herald_failures_total", &[("reason", "PoolExhausted")]);
        r.inc("herald_failures_total", &[("reason", "PoolExhausted")]);
        r.inc("herald_failures_total", &[("reason", "IPInUse")]);
        assert_eq!(
            r.render(),
            "# HELP herald_failures_total Failures by reason.\n\
             # TYPE herald_failures_total counter\n\
             herald_failures_total{reason=\"IPInUse\"} 1\n\
             herald_failures_total{reason=\"PoolExhausted\"} 2\n\
             # HELP herald_idle Never set.\n\
             # TYPE herald_idle gauge\n"
        );
    }

    #[test]
    fn escapes_label_values_and_ignores_undescribed_families() {
        let r = Registry::new();
        r.describe("g", Kind::Gauge, "h");
        r.set("g", &[("pool", "a\"b\\c\nd")], 3.0);
        r.inc("not_described", &[]);
        assert_eq!(
            r.render(),
            "# HELP g h\n# TYPE g gauge\ng{pool=\"a\\\"b\\\\c\\nd\"} 3\n"
        );
        r.remove_matching("g", "pool", "a\"b\\c\nd");
        assert_eq!(r.get("g", &[("pool", "a\"b\\c\nd")]), None);
    }
}
