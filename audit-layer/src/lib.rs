//! Security event schema, anomaly detection and audit sinks (not built yet: see issue 6).
