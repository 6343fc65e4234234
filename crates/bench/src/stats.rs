//! Timed runs and their summaries.

use crate::system::Usage;
use crate::units::megabytes_per_second;

/// One timed run.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub seconds: f64,
    /// What the bench process used during the run (the client side, or both
    /// ends of the raw copy).
    pub bench: Usage,
    /// What the server used during the run (it idles during the raw copy).
    pub server: Usage,
}

/// The runs of one kind of transfer.
#[derive(Debug)]
pub struct Series {
    pub name: &'static str,
    pub samples: Vec<Sample>,
}

impl Series {
    pub fn new(name: &'static str) -> Self {
        Self { name, samples: Vec::new() }
    }

    /// MB/s of each run, in run order.
    pub fn rates(&self, bytes: u64) -> Vec<f64> {
        self.samples.iter().map(|s| megabytes_per_second(bytes, s.seconds)).collect()
    }

    pub fn rate(&self, bytes: u64) -> Summary {
        Summary::of(&self.rates(bytes))
    }

    pub fn seconds(&self) -> Summary {
        self.summarize(|s| s.seconds)
    }

    pub fn bench_cpu(&self) -> Summary {
        self.summarize(|s| s.bench.cpu_seconds)
    }

    pub fn server_cpu(&self) -> Summary {
        self.summarize(|s| s.server.cpu_seconds)
    }

    pub fn bench_faults(&self) -> Summary {
        self.summarize(|s| s.bench.minor_faults as f64)
    }

    pub fn server_faults(&self) -> Summary {
        self.summarize(|s| s.server.minor_faults as f64)
    }

    fn summarize(&self, value: impl Fn(&Sample) -> f64) -> Summary {
        Summary::of(&self.samples.iter().map(value).collect::<Vec<_>>())
    }
}

/// Median, min and max. The median, not the mean: one run disturbed by the
/// host should not move the headline figure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// Summary of a non-empty list (an empty one gives NaNs).
    pub fn of(values: &[f64]) -> Self {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => sorted[n / 2],
            _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Self {
            median,
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(Summary::of(&[3.0, 1.0, 2.0]), Summary { median: 2.0, min: 1.0, max: 3.0 });
        assert_eq!(Summary::of(&[4.0, 1.0, 2.0, 3.0]), Summary { median: 2.5, min: 1.0, max: 4.0 });
        assert_eq!(Summary::of(&[7.0]), Summary { median: 7.0, min: 7.0, max: 7.0 });
        assert!(Summary::of(&[]).median.is_nan());
    }
}
