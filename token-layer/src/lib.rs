//! Secret stores, short-lived token rotation, bearer injection and bearer validation (not built yet: see issue 3).
