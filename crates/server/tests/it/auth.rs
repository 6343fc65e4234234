//! Tokens and scopes: the auth matrix.
