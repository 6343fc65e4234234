//! Metrics: a scrape after real traffic shows the counters moved.
