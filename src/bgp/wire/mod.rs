//! BGP messages on the wire: framing, validation and encoding.
//!
//! Everything a peer sends passes through the project's own checks here
//! before zettabgp sees a byte of it (zettabgp 0.6 panics or loops forever on
//! some malformed input; see `docs/architecture.md`). Each failure maps to the
//! NOTIFICATION RFC 4271 section 6 names, or to an RFC 7606 action.

pub mod encode;
pub mod open;
pub mod update;

use std::fmt;

pub const HEADER_LEN: usize = 19;
pub const MAX_MESSAGE_LEN: usize = 4096;
pub const MARKER: [u8; 16] = [0xff; 16];

pub const AFI_IPV4: u16 = 1;
pub const AFI_IPV6: u16 = 2;
pub const SAFI_UNICAST: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Afi {
    Ipv4,
    Ipv6,
}

impl Afi {
    pub fn code(self) -> u16 {
        match self {
            Afi::Ipv4 => AFI_IPV4,
            Afi::Ipv6 => AFI_IPV6,
        }
    }
    pub fn from_code(afi: u16, safi: u8) -> Option<Afi> {
        match (afi, safi) {
            (AFI_IPV4, SAFI_UNICAST) => Some(Afi::Ipv4),
            (AFI_IPV6, SAFI_UNICAST) => Some(Afi::Ipv6),
            _ => None,
        }
    }
    pub fn max_len(self) -> u8 {
        match self {
            Afi::Ipv4 => 32,
            Afi::Ipv6 => 128,
        }
    }
}

impl fmt::Display for Afi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Afi::Ipv4 => "ipv4-unicast",
            Afi::Ipv6 => "ipv6-unicast",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgType {
    Open = 1,
    Update = 2,
    Notification = 3,
    Keepalive = 4,
    RouteRefresh = 5,
}

/// NOTIFICATION error codes (RFC 4271 4.5) and the subcodes used here.
pub mod code {
    pub const HEADER: u8 = 1;
    pub const OPEN: u8 = 2;
    pub const UPDATE: u8 = 3;
    pub const HOLD_TIMER: u8 = 4;
    pub const FSM: u8 = 5;
    pub const CEASE: u8 = 6;
    pub const ROUTE_REFRESH: u8 = 7;

    // Message Header Error
    pub const CONN_NOT_SYNC: u8 = 1;
    pub const BAD_LENGTH: u8 = 2;
    pub const BAD_TYPE: u8 = 3;
    // OPEN Message Error
    pub const UNSUPPORTED_VERSION: u8 = 1;
    pub const BAD_PEER_AS: u8 = 2;
    pub const BAD_BGP_ID: u8 = 3;
    pub const UNSUPPORTED_OPT_PARAM: u8 = 4;
    pub const UNACCEPTABLE_HOLD: u8 = 6;
    pub const UNSUPPORTED_CAPABILITY: u8 = 7;
    // UPDATE Message Error
    pub const MALFORMED_ATTR_LIST: u8 = 1;
    pub const UNRECOGNIZED_WELL_KNOWN: u8 = 2;
    pub const OPTIONAL_ATTR_ERROR: u8 = 9;
    pub const INVALID_NETWORK: u8 = 10;
    // Cease (RFC 4486)
    pub const MAX_PREFIXES: u8 = 1;
    pub const ADMIN_SHUTDOWN: u8 = 2;
    pub const PEER_DECONFIGURED: u8 = 3;
    pub const ADMIN_RESET: u8 = 4;
    pub const CONNECTION_REJECTED: u8 = 5;
    pub const OTHER_CONFIG_CHANGE: u8 = 6;
    pub const COLLISION_RESOLUTION: u8 = 7;
    pub const OUT_OF_RESOURCES: u8 = 8;
    /// RFC 9384.
    pub const BFD_DOWN: u8 = 10;
    // Route-Refresh Message Error (RFC 7313)
    pub const INVALID_RR_LENGTH: u8 = 1;
}

/// A NOTIFICATION, sent or received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

impl Notification {
    pub fn new(code: u8, subcode: u8) -> Self {
        Notification {
            code,
            subcode,
            data: Vec::new(),
        }
    }
    pub fn with_data(code: u8, subcode: u8, data: impl Into<Vec<u8>>) -> Self {
        Notification {
            code,
            subcode,
            data: data.into(),
        }
    }
    /// Cease with an RFC 9003 shutdown communication (UTF-8, at most 255 bytes).
    pub fn shutdown(subcode: u8, message: &str) -> Self {
        let mut end = message.len().min(255);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let mut data = vec![end as u8];
        data.extend_from_slice(&message.as_bytes()[..end]);
        Notification::with_data(code::CEASE, subcode, data)
    }

    pub fn encode(&self) -> Vec<u8> {
        let data = &self.data[..self.data.len().min(MAX_MESSAGE_LEN - HEADER_LEN - 2)];
        let mut out = Vec::with_capacity(HEADER_LEN + 2 + data.len());
        push_header(&mut out, 2 + data.len(), MsgType::Notification);
        out.push(self.code);
        out.push(self.subcode);
        out.extend_from_slice(data);
        out
    }

    pub fn parse(body: &[u8]) -> Notification {
        Notification {
            code: body.first().copied().unwrap_or(0),
            subcode: body.get(1).copied().unwrap_or(0),
            data: body.get(2..).unwrap_or(&[]).to_vec(),
        }
    }

    /// The RFC 9003 shutdown communication, where this is one.
    pub fn shutdown_message(&self) -> Option<String> {
        if self.code != code::CEASE
            || !(self.subcode == code::ADMIN_SHUTDOWN || self.subcode == code::ADMIN_RESET)
        {
            return None;
        }
        let n = *self.data.first()? as usize;
        let text = self.data.get(1..1 + n)?;
        Some(String::from_utf8_lossy(text).into_owned())
    }
}

impl fmt::Display for Notification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match (self.code, self.subcode) {
            (1, 1) => "Message Header Error / Connection Not Synchronized",
            (1, 2) => "Message Header Error / Bad Message Length",
            (1, 3) => "Message Header Error / Bad Message Type",
            (1, _) => "Message Header Error",
            (2, 1) => "OPEN Message Error / Unsupported Version Number",
            (2, 2) => "OPEN Message Error / Bad Peer AS",
            (2, 3) => "OPEN Message Error / Bad BGP Identifier",
            (2, 4) => "OPEN Message Error / Unsupported Optional Parameter",
            (2, 6) => "OPEN Message Error / Unacceptable Hold Time",
            (2, 7) => "OPEN Message Error / Unsupported Capability",
            (2, _) => "OPEN Message Error",
            (3, 1) => "UPDATE Message Error / Malformed Attribute List",
            (3, 2) => "UPDATE Message Error / Unrecognized Well-known Attribute",
            (3, 9) => "UPDATE Message Error / Optional Attribute Error",
            (3, 10) => "UPDATE Message Error / Invalid Network Field",
            (3, _) => "UPDATE Message Error",
            (4, _) => "Hold Timer Expired",
            (5, _) => "Finite State Machine Error",
            (6, 2) => "Cease / Administrative Shutdown",
            (6, 3) => "Cease / Peer De-configured",
            (6, 4) => "Cease / Administrative Reset",
            (6, 5) => "Cease / Connection Rejected",
            (6, 6) => "Cease / Other Configuration Change",
            (6, 7) => "Cease / Connection Collision Resolution",
            (6, 8) => "Cease / Out of Resources",
            (6, 9) => "Cease / Hard Reset",
            (6, _) => "Cease",
            (7, _) => "Route-Refresh Message Error",
            _ => "unknown error",
        };
        write!(f, "{name} ({}/{})", self.code, self.subcode)?;
        if let Some(m) = self.shutdown_message() {
            write!(f, ": {m:?}")?;
        }
        Ok(())
    }
}

pub fn push_header(out: &mut Vec<u8>, body_len: usize, t: MsgType) {
    out.extend_from_slice(&MARKER);
    out.extend_from_slice(&((HEADER_LEN + body_len) as u16).to_be_bytes());
    out.push(t as u8);
}

pub fn keepalive() -> [u8; HEADER_LEN] {
    let mut b = [0xffu8; HEADER_LEN];
    b[16] = 0;
    b[17] = HEADER_LEN as u8;
    b[18] = MsgType::Keepalive as u8;
    b
}

pub fn route_refresh(afi: Afi) -> Vec<u8> {
    let mut out = Vec::with_capacity(23);
    push_header(&mut out, 4, MsgType::RouteRefresh);
    out.extend_from_slice(&afi.code().to_be_bytes());
    out.push(0);
    out.push(SAFI_UNICAST);
    out
}

/// Checks a message header (RFC 4271 6.1) and returns the type and the
/// whole message length.
pub fn check_header(h: &[u8; HEADER_LEN]) -> Result<(MsgType, usize), Notification> {
    if h[..16] != MARKER {
        return Err(Notification::new(code::HEADER, code::CONN_NOT_SYNC));
    }
    let len = u16::from_be_bytes([h[16], h[17]]) as usize;
    let bad_len = || Notification::with_data(code::HEADER, code::BAD_LENGTH, [h[16], h[17]]);
    if !(HEADER_LEN..=MAX_MESSAGE_LEN).contains(&len) {
        return Err(bad_len());
    }
    let t = match h[18] {
        1 => MsgType::Open,
        2 => MsgType::Update,
        3 => MsgType::Notification,
        4 => MsgType::Keepalive,
        5 => MsgType::RouteRefresh,
        other => {
            return Err(Notification::with_data(
                code::HEADER,
                code::BAD_TYPE,
                [other],
            ));
        }
    };
    let ok = match t {
        MsgType::Open => len >= 29,
        MsgType::Update => len >= 23,
        MsgType::Notification => len >= 21,
        MsgType::Keepalive => len == 19,
        // RFC 7313 makes a wrong length a Route-Refresh error, but that is
        // only for messages with the enhanced-refresh subtypes; plain ones
        // are a header error as in RFC 2918.
        MsgType::RouteRefresh => len == 23,
    };
    if !ok {
        return Err(bad_len());
    }
    Ok((t, len))
}

/// A prefix longer than its family allows, or running past the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadPrefix;

/// Reads NLRI-encoded prefixes (RFC 4271 4.3) and calls `f` for each.
pub fn walk_prefixes(
    mut buf: &[u8],
    afi: Afi,
    mut f: impl FnMut(u8, &[u8]),
) -> Result<usize, BadPrefix> {
    let mut n = 0;
    while let Some((&len, rest)) = buf.split_first() {
        if len > afi.max_len() {
            return Err(BadPrefix);
        }
        let bytes = (len as usize).div_ceil(8);
        if rest.len() < bytes {
            return Err(BadPrefix);
        }
        f(len, &rest[..bytes]);
        buf = &rest[bytes..];
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(len: u16, t: u8) -> [u8; 19] {
        let mut h = [0xff; 19];
        h[16..18].copy_from_slice(&len.to_be_bytes());
        h[18] = t;
        h
    }

    /// No NOTIFICATION is longer than 4,096 bytes, whatever its data (an
    /// echoed attribute, say), and an RFC 9003 text is cut at 255 bytes on
    /// a character boundary.
    #[test]
    fn notifications_stay_within_one_message() {
        let big = Notification::with_data(code::UPDATE, 1, vec![7u8; 10_000]).encode();
        assert_eq!(big.len(), MAX_MESSAGE_LEN);
        assert_eq!(
            check_header(big[..HEADER_LEN].try_into().unwrap()),
            Ok((MsgType::Notification, MAX_MESSAGE_LEN))
        );
        let text = "é".repeat(200);
        let n = Notification::shutdown(code::ADMIN_SHUTDOWN, &text);
        assert_eq!(n.data[0], 254, "cut on a character boundary");
        assert_eq!(n.shutdown_message().unwrap(), "é".repeat(127));
        assert!(n.encode().len() <= MAX_MESSAGE_LEN);
        assert_eq!(route_refresh(Afi::Ipv6).len(), 23);
    }

    #[test]
    fn header_checks_map_to_rfc4271_subcodes() {
        assert_eq!(check_header(&hdr(19, 4)), Ok((MsgType::Keepalive, 19)));
        let mut bad = hdr(19, 4);
        bad[3] = 0;
        assert_eq!(check_header(&bad).unwrap_err(), Notification::new(1, 1));
        assert_eq!(
            check_header(&hdr(18, 4)).unwrap_err(),
            Notification::with_data(1, 2, [0, 18])
        );
        assert_eq!(
            check_header(&hdr(4097, 2)).unwrap_err(),
            Notification::with_data(1, 2, [0x10, 0x01])
        );
        assert_eq!(check_header(&hdr(20, 4)).unwrap_err().subcode, 2);
        assert_eq!(check_header(&hdr(28, 1)).unwrap_err().subcode, 2);
        assert_eq!(check_header(&hdr(22, 2)).unwrap_err().subcode, 2);
        assert_eq!(check_header(&hdr(20, 3)).unwrap_err().subcode, 2);
        assert_eq!(check_header(&hdr(24, 5)).unwrap_err().subcode, 2);
        assert_eq!(
            check_header(&hdr(19, 9)).unwrap_err(),
            Notification::with_data(1, 3, [9])
        );
    }

    #[test]
    fn shutdown_communication_round_trips_and_truncates_on_char_boundary() {
        let n = Notification::shutdown(code::ADMIN_SHUTDOWN, "maintenance");
        let bytes = n.encode();
        assert_eq!(&bytes[19..22], &[6, 2, 11]);
        let back = Notification::parse(&bytes[19..]);
        assert_eq!(back.shutdown_message().as_deref(), Some("maintenance"));
        let long = "é".repeat(200);
        let n = Notification::shutdown(code::ADMIN_SHUTDOWN, &long);
        assert_eq!(n.data[0], 254);
        assert!(std::str::from_utf8(&n.data[1..]).is_ok());
    }

    #[test]
    fn prefixes_are_bounded_by_family_and_buffer() {
        let mut seen = vec![];
        let n = walk_prefixes(&[32, 203, 0, 113, 1, 0], Afi::Ipv4, |l, b| {
            seen.push((l, b.to_vec()))
        });
        assert_eq!(n, Ok(2));
        assert_eq!(seen[1], (0, vec![]));
        assert!(walk_prefixes(&[33, 1, 2, 3, 4, 5], Afi::Ipv4, |_, _| {}).is_err());
        assert!(walk_prefixes(&[24, 1, 2], Afi::Ipv4, |_, _| {}).is_err());
        assert!(walk_prefixes(&[255], Afi::Ipv6, |_, _| {}).is_err());
    }
}

#[cfg(test)]
mod roundtrip;
