//! Limits: each holds, and the server keeps serving everyone else.
