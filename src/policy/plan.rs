//! The seed timing analysis (filled in by the plan work).
