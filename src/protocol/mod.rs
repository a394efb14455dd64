//! Bytes on the wire: the request grammar Redis accepts from clients, the framing of its RESP2/RESP3 replies,
//! and the decoding of the few replies the proxy must understand. No policy lives here.

pub mod reply;
pub mod request;
pub mod value;
