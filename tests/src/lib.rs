//! End-to-end tests across the workspace: server, client and CLI together, and interop
//! with the Prefect Python client. Test helpers live here; the tests live in `tests/`.
