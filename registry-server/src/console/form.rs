//! Block forms generated from block schemas (placeholder).
