//! The web console at `/`: server-rendered pages over the same store rules as the API.
#![allow(dead_code)]

pub(crate) mod form;
