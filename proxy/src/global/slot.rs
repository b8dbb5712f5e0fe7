//! Redis Cluster key slots: CRC16 (XMODEM) of a key's hash tag, modulo 16384, as Redis and
//! redis-rs compute them. Health is kept per shard, so each decision needs its key's slot;
//! redis-rs's `Slot` keeps the number private, hence this small copy.

/// Slots in a Redis Cluster.
pub const SLOTS: u16 = 16_384;

/// CRC16-CCITT (XMODEM: polynomial 0x1021, initial 0), byte-wise table, built at compile time.
const TABLE: [u16; 256] = {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        t[i] = crc;
        i += 1;
    }
    t
};

fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &b| {
        (crc << 8) ^ TABLE[usize::from((crc >> 8) as u8 ^ b)]
    })
}

/// The slot of `key`: only the part inside the first non-empty `{...}` counts, if any.
pub fn of_key(key: &[u8]) -> u16 {
    let tag = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            Some(&rest[..close])
        })
        .filter(|t| !t.is_empty());
    crc16(tag.unwrap_or(key)) % SLOTS
}

/// A short hash tag whose slot is `slot`: probes of a shard use a key tagged with it, so they
/// land where that shard's decisions land. Every slot has one among the first few hundred
/// thousand decimal numbers (CRC16 spreads them evenly), so the search ends quickly.
pub fn tag_for(slot: u16) -> String {
    (0u32..)
        .map(|n| n.to_string())
        .find(|t| crc16(t.as_bytes()) % SLOTS == slot % SLOTS)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::cluster_routing::Slot;

    #[test]
    fn matches_redis_and_redis_rs() {
        // From the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(of_key(b"foo"), 12182);
        assert_eq!(of_key(b"{user1000}.following"), of_key(b"user1000"));
        assert_eq!(of_key(b"foo{}{bar}"), of_key(b"foo{}{bar}"));
        for key in [
            "fg:{g:00000000000000ff}",
            "a{b}c",
            "{}x",
            "x{",
            "",
            "floodgate",
        ] {
            assert_eq!(
                Slot::new(of_key(key.as_bytes())),
                Some(Slot::for_key(key)),
                "{key}"
            );
        }
    }

    #[test]
    fn every_slot_has_a_tag() {
        for slot in [0, 1, 5460, 5461, 10922, 16383] {
            let tag = tag_for(slot);
            assert_eq!(of_key(format!("fg:probe:{{{tag}}}").as_bytes()), slot);
        }
    }
}
