//! Placeholder: filled by the fix for this threat.
