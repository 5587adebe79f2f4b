//! [`PackedHeaders`]: a request's headers kept for a re-send, copied into one buffer.
//!
//! Every routed call keeps its head in case it must be sent again, and nearly every call ends
//! without a re-send. `HeaderMap::clone` allocates the map's two tables and, for each name or
//! value the application built from a string, a shared reference count the first time that
//! buffer is cloned: eight allocations for four typical headers. Copying the bytes into one
//! buffer costs one allocation whatever the number of headers; the map is rebuilt only when a
//! re-send happens.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// A request's headers in one buffer: for each header, in the map's order (every value of a
/// name together, in order), a sensitivity byte, the name's length and bytes, then the value's
/// length and bytes.
#[derive(Debug, Default)]
pub(crate) struct PackedHeaders {
    bytes: Vec<u8>,
    // How many distinct names: the capacity of the rebuilt map. Not the number of values,
    // which `HeaderMap` does not bound while its capacity is limited to 32,768 names.
    names: usize,
}

impl PackedHeaders {
    /// Copies `headers`. No allocation when there are none.
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        if headers.is_empty() {
            return PackedHeaders::default();
        }
        let size: usize = headers
            .iter()
            .map(|(name, value)| 1 + 4 + name.as_str().len() + 4 + value.len())
            .sum();
        let mut bytes = Vec::with_capacity(size);
        for (name, value) in headers {
            bytes.push(u8::from(value.is_sensitive()));
            put(&mut bytes, name.as_str().as_bytes());
            put(&mut bytes, value.as_bytes());
        }
        PackedHeaders {
            bytes,
            names: headers.keys_len(),
        }
    }

    /// The headers as they were.
    pub(crate) fn unpack(&self) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(self.names);
        let mut rest = &self.bytes[..];
        while let Some((&sensitive, after)) = rest.split_first() {
            let (name, after) = take(after);
            let (value, after) = take(after);
            rest = after;
            // Both were taken from a `HeaderMap`, whose names and values `http` has already
            // checked by these same rules (only an `unsafe` unchecked constructor could have
            // broken them, against its contract).
            let name = HeaderName::from_bytes(name).expect("a HeaderName's bytes always parse again");
            let mut value = HeaderValue::from_bytes(value).expect("a HeaderValue's bytes always parse again");
            value.set_sensitive(sensitive != 0);
            headers.append(name, value);
        }
        headers
    }
}

fn put(bytes: &mut Vec<u8>, field: &[u8]) {
    // A name or value is far below 4 GiB: `http` limits names to 64 KiB, and servers refuse
    // heads a tiny fraction of that.
    bytes.extend_from_slice(&(field.len() as u32).to_le_bytes());
    bytes.extend_from_slice(field);
}

fn take(bytes: &[u8]) -> (&[u8], &[u8]) {
    let (len, rest) = bytes.split_at(4);
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    rest.split_at(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_come_back_as_they_were() {
        let mut headers = HeaderMap::new();
        headers.insert("accept", HeaderValue::from_static("application/json"));
        let mut token = HeaderValue::from_str("Bearer abc.def").unwrap();
        token.set_sensitive(true);
        headers.insert(http::header::AUTHORIZATION, token);
        headers.append("x-many", HeaderValue::from_static("one"));
        headers.append("x-many", HeaderValue::from_static("two"));
        headers.insert("odata-maxversion", HeaderValue::from_static("4.0"));
        // Tab and obs-text are allowed in values.
        headers.insert("x-bytes", HeaderValue::from_bytes(b"a\tb \xe9\xff").unwrap());
        headers.insert("x-empty", HeaderValue::from_static(""));

        let unpacked = PackedHeaders::of(&headers).unpack();
        assert_eq!(unpacked, headers);
        assert!(unpacked[http::header::AUTHORIZATION].is_sensitive());
        assert!(!unpacked["accept"].is_sensitive());
        let many: Vec<_> = unpacked.get_all("x-many").iter().collect();
        assert_eq!(many, ["one", "two"]);
        // The same order as the original map.
        let order = |map: &HeaderMap| {
            map.iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(order(&unpacked), order(&headers));
    }

    /// `HeaderMap` caps its names, not its values: one name may carry any number of values,
    /// and a head with many of them must come back whole, not panic at the re-send.
    #[test]
    fn many_values_of_one_name_come_back() {
        let mut headers = HeaderMap::new();
        headers.insert("accept", HeaderValue::from_static("application/json"));
        for i in 0..30_000u32 {
            headers.append("x-many", HeaderValue::from(i));
        }
        assert_eq!(headers.len(), 30_001);
        let unpacked = PackedHeaders::of(&headers).unpack();
        assert_eq!(unpacked, headers);
        let many: Vec<_> = unpacked.get_all("x-many").iter().collect();
        assert_eq!(many.len(), 30_000);
        assert_eq!(many[29_999], "29999");

        // And a map holding as many names as it accepts.
        let mut names = HeaderMap::new();
        for i in 0u32.. {
            let name = HeaderName::from_bytes(format!("x-{i}").as_bytes()).unwrap();
            if names.try_append(name, HeaderValue::from(i)).is_err() {
                break;
            }
        }
        assert_eq!(PackedHeaders::of(&names).unpack(), names);
    }

    #[test]
    fn no_headers_keep_no_buffer() {
        let packed = PackedHeaders::of(&HeaderMap::new());
        assert_eq!(packed.bytes.capacity(), 0);
        assert!(packed.unpack().is_empty());
    }
}
