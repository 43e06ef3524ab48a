//! BFD Control packets (RFC 5880 section 4.1) and the reception checks of
//! section 6.8.6 that need no session: version, length, detect multiplier,
//! multipoint, My Discriminator, authentication. Plain bytes in, a packet
//! or the check it failed out; no allocation, no panic on any input (a fuzz
//! target runs it). The session's checks (Your Discriminator lookup, TTL)
//! are the I/O side's, and count under the same `Drop` labels.

/// The only version RFC 5880 defines.
pub const VERSION: u8 = 1;
/// The mandatory section; vipd uses no authentication, so it sends and
/// accepts exactly this much.
pub const LEN: usize = 24;

/// `bfd.SessionState` and the State field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    AdminDown,
    Down,
    Init,
    Up,
}

impl State {
    fn from_bits(b: u8) -> State {
        match b & 3 {
            0 => State::AdminDown,
            1 => State::Down,
            2 => State::Init,
            _ => State::Up,
        }
    }

    fn bits(self) -> u8 {
        match self {
            State::AdminDown => 0,
            State::Down => 1,
            State::Init => 2,
            State::Up => 3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            State::AdminDown => "AdminDown",
            State::Down => "Down",
            State::Init => "Init",
            State::Up => "Up",
        }
    }
}

/// Diagnostic codes (RFC 5880 section 4.1).
pub mod diag {
    pub const NONE: u8 = 0;
    pub const DETECTION_EXPIRED: u8 = 1;
    pub const NEIGHBOR_DOWN: u8 = 3;
    pub const ADMIN_DOWN: u8 = 7;

    pub fn name(d: u8) -> &'static str {
        match d {
            0 => "no diagnostic",
            1 => "control detection time expired",
            2 => "echo function failed",
            3 => "neighbor signaled session down",
            4 => "forwarding plane reset",
            5 => "path down",
            6 => "concatenated path down",
            7 => "administratively down",
            8 => "reverse concatenated path down",
            _ => "unknown diagnostic",
        }
    }
}

/// One Control packet's mandatory section. Intervals in microseconds, as
/// on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Packet {
    pub diag: u8,
    pub state: State,
    pub poll: bool,
    pub fin: bool,
    /// Control Plane Independent: vipd's BFD runs in its control plane, so
    /// it sends 0 (RFC 5882 section 4.3).
    pub cpi: bool,
    pub demand: bool,
    pub detect_mult: u8,
    pub my_disc: u32,
    pub your_disc: u32,
    pub desired_min_tx: u32,
    pub required_min_rx: u32,
    pub required_min_echo_rx: u32,
}

/// Why a received packet was dropped: the check that failed (a metric
/// label each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Drop {
    /// Shorter than the mandatory section.
    Short,
    Version,
    /// The Length field below the minimum or beyond the bytes received.
    Length,
    ZeroMultiplier,
    Multipoint,
    ZeroMyDiscriminator,
    /// The A bit: vipd configures no authentication (section 6.8.6).
    Authentication,
    /// Your Discriminator zero while the State field is not Down or
    /// AdminDown.
    ZeroYourDiscriminator,
    /// No session has that Your Discriminator, or none for the source.
    NoSession,
    /// A TTL or hop limit below the session's floor: 255 for single hop
    /// (RFC 5881 section 5), set by the peer's `ttl` for multihop.
    Ttl,
}

impl Drop {
    pub const ALL: [Drop; 10] = [
        Drop::Short,
        Drop::Version,
        Drop::Length,
        Drop::ZeroMultiplier,
        Drop::Multipoint,
        Drop::ZeroMyDiscriminator,
        Drop::Authentication,
        Drop::ZeroYourDiscriminator,
        Drop::NoSession,
        Drop::Ttl,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Drop::Short => "short",
            Drop::Version => "version",
            Drop::Length => "length",
            Drop::ZeroMultiplier => "zero_multiplier",
            Drop::Multipoint => "multipoint",
            Drop::ZeroMyDiscriminator => "zero_my_discriminator",
            Drop::Authentication => "authentication",
            Drop::ZeroYourDiscriminator => "zero_your_discriminator",
            Drop::NoSession => "no_session",
            Drop::Ttl => "ttl",
        }
    }
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Section 6.8.6, in its order, for the checks that need no session.
pub fn parse(b: &[u8]) -> Result<Packet, Drop> {
    if b.len() < LEN {
        return Err(Drop::Short);
    }
    if b[0] >> 5 != VERSION {
        return Err(Drop::Version);
    }
    let flags = b[1];
    let auth = flags & 0x04 != 0;
    let len = b[3] as usize;
    let min = if auth { LEN + 2 } else { LEN };
    if len < min || len > b.len() {
        return Err(Drop::Length);
    }
    let p = Packet {
        diag: b[0] & 0x1f,
        state: State::from_bits(flags >> 6),
        poll: flags & 0x20 != 0,
        fin: flags & 0x10 != 0,
        cpi: flags & 0x08 != 0,
        demand: flags & 0x02 != 0,
        detect_mult: b[2],
        my_disc: u32_at(b, 4),
        your_disc: u32_at(b, 8),
        desired_min_tx: u32_at(b, 12),
        required_min_rx: u32_at(b, 16),
        required_min_echo_rx: u32_at(b, 20),
    };
    if p.detect_mult == 0 {
        return Err(Drop::ZeroMultiplier);
    }
    if flags & 0x01 != 0 {
        return Err(Drop::Multipoint);
    }
    if p.my_disc == 0 {
        return Err(Drop::ZeroMyDiscriminator);
    }
    if p.your_disc == 0 && !matches!(p.state, State::Down | State::AdminDown) {
        return Err(Drop::ZeroYourDiscriminator);
    }
    if auth {
        return Err(Drop::Authentication);
    }
    Ok(p)
}

impl Packet {
    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0] = (VERSION << 5) | (self.diag & 0x1f);
        b[1] = (self.state.bits() << 6)
            | u8::from(self.poll) << 5
            | u8::from(self.fin) << 4
            | u8::from(self.cpi) << 3
            | u8::from(self.demand) << 1;
        b[2] = self.detect_mult;
        b[3] = LEN as u8;
        b[4..8].copy_from_slice(&self.my_disc.to_be_bytes());
        b[8..12].copy_from_slice(&self.your_disc.to_be_bytes());
        b[12..16].copy_from_slice(&self.desired_min_tx.to_be_bytes());
        b[16..20].copy_from_slice(&self.required_min_rx.to_be_bytes());
        b[20..24].copy_from_slice(&self.required_min_echo_rx.to_be_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up() -> Packet {
        Packet {
            diag: 0,
            state: State::Up,
            poll: true,
            fin: false,
            cpi: false,
            demand: false,
            detect_mult: 3,
            my_disc: 7,
            your_disc: 9,
            desired_min_tx: 300_000,
            required_min_rx: 300_000,
            required_min_echo_rx: 0,
        }
    }

    #[test]
    fn a_packet_survives_its_encoding() {
        let p = up();
        let b = p.encode();
        assert_eq!(b[0], 0x20, "version 1, no diagnostic");
        assert_eq!(b[1], 0xe0, "Up with P");
        assert_eq!(b[3], 24);
        assert_eq!(parse(&b), Ok(p));
        let fin = Packet {
            poll: false,
            fin: true,
            diag: diag::DETECTION_EXPIRED,
            state: State::Down,
            ..p
        };
        assert_eq!(parse(&fin.encode()), Ok(fin));
    }

    #[test]
    fn each_check_of_section_6_8_6_drops_with_its_reason() {
        let good = up().encode();
        let with = |f: &dyn Fn(&mut [u8; LEN])| {
            let mut b = good;
            f(&mut b);
            parse(&b)
        };
        assert_eq!(parse(&good[..23]), Err(Drop::Short));
        assert_eq!(with(&|b| b[0] = 0x40), Err(Drop::Version));
        assert_eq!(with(&|b| b[3] = 23), Err(Drop::Length));
        assert_eq!(
            with(&|b| b[3] = 25),
            Err(Drop::Length),
            "beyond the payload"
        );
        assert_eq!(with(&|b| b[2] = 0), Err(Drop::ZeroMultiplier));
        assert_eq!(with(&|b| b[1] |= 0x01), Err(Drop::Multipoint));
        assert_eq!(with(&|b| b[4..8].fill(0)), Err(Drop::ZeroMyDiscriminator));
        assert_eq!(
            with(&|b| b[8..12].fill(0)),
            Err(Drop::ZeroYourDiscriminator)
        );
        // Your Discriminator zero is fine from a session still Down.
        let down = with(&|b| {
            b[8..12].fill(0);
            b[1] = 0x40;
        });
        assert_eq!(down.map(|p| p.state), Ok(State::Down));
        // The A bit: the length must hold an authentication section, and
        // vipd configures none, so it is dropped either way.
        assert_eq!(with(&|b| b[1] |= 0x04), Err(Drop::Length));
        let mut long = [0u8; 26];
        long[..24].copy_from_slice(&good);
        long[1] |= 0x04;
        long[3] = 26;
        assert_eq!(parse(&long), Err(Drop::Authentication));
        // Trailing bytes beyond the Length field are not part of it.
        let mut trailing = [0u8; 30];
        trailing[..24].copy_from_slice(&good);
        assert_eq!(parse(&trailing), Ok(up()));
    }

    #[test]
    fn any_bytes_parse_or_drop_without_panic() {
        use proptest::prelude::*;
        proptest!(|(b in proptest::collection::vec(any::<u8>(), 0..64))| {
            if let Ok(p) = parse(&b) {
                prop_assert!(p.detect_mult > 0 && p.my_disc != 0);
                prop_assert_eq!(parse(&p.encode()), Ok(p));
            }
        });
    }
}
