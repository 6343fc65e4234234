//! TLS and mutual TLS with certificates made in the test.
