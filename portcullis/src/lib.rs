//! Facade over the Portcullis layers and the `portcullis` CLI (being built: see issues 2 and 6).
