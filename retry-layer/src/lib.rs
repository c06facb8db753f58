//! Retries with backoff and budgets, governor rate limits and circuit breaking (not built yet: see issue 5).
