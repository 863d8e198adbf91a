//! Test harness (see tests/tests/).
