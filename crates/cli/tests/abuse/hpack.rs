//! Just enough HPACK (RFC 7541) for the HTTP/2 client in `raw.rs`: the
//! integers and plain string literals of the request headers it sends, and
//! a decoder (dynamic table and Huffman code included) for the headers and
//! trailers it reads, checked against the RFC's examples.

use std::collections::{HashMap, VecDeque};
use std::sync::OnceLock;

/// An HPACK integer with an `prefix`-bit prefix, under `flags`.
pub fn hpack_int(out: &mut Vec<u8>, prefix: u32, flags: u8, value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        out.push((rest % 0x80) as u8 | 0x80);
        rest /= 0x80;
    }
    out.push(rest as u8);
}

/// An HPACK string literal, not Huffman-coded.
pub fn hpack_str(out: &mut Vec<u8>, value: &str) {
    hpack_int(out, 7, 0, value.len());
    out.extend_from_slice(value.as_bytes());
}

/// RFC 7541, Appendix A.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Code lengths of the HPACK Huffman code (RFC 7541, Appendix B), symbols
/// 0..=255 and EOS. The code is canonical, so the lengths define it.
const HUFFMAN_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28,
    28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12,
    10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6,
    5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22,
    22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22, 21, 20,
    22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28,
    27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28,
    27, 27, 27, 27, 27, 26, 30,
];

/// (length, code) → symbol.
fn huffman_codes() -> &'static HashMap<(u8, u32), u16> {
    static CODES: OnceLock<HashMap<(u8, u32), u16>> = OnceLock::new();
    CODES.get_or_init(|| {
        let mut symbols: Vec<u16> = (0..257).collect();
        symbols.sort_by_key(|&symbol| (HUFFMAN_LENGTHS[symbol as usize], symbol));
        let (mut code, mut length) = (0u32, HUFFMAN_LENGTHS[symbols[0] as usize]);
        let mut codes = HashMap::new();
        for symbol in symbols {
            let next = HUFFMAN_LENGTHS[symbol as usize];
            code <<= next - length;
            length = next;
            codes.insert((length, code), symbol);
            code += 1;
        }
        codes
    })
}

pub fn huffman_decode(data: &[u8]) -> Vec<u8> {
    let codes = huffman_codes();
    let (mut out, mut code, mut length) = (Vec::new(), 0u32, 0u8);
    for bit in data.iter().flat_map(|byte| (0..8).rev().map(move |i| (byte >> i) & 1)) {
        code = code << 1 | bit as u32;
        length += 1;
        if let Some(&symbol) = codes.get(&(length, code)) {
            assert!(symbol < 256, "EOS inside a Huffman string");
            out.push(symbol as u8);
            (code, length) = (0, 0);
        }
    }
    assert!(length < 8 && code == (1 << length) - 1, "bad Huffman padding");
    out
}

/// An HPACK decoder (RFC 7541, section 6), dynamic table included.
#[derive(Debug)]
pub struct Hpack {
    dynamic: VecDeque<(String, String)>,
    size: usize,
    max: usize,
}

impl Default for Hpack {
    fn default() -> Self {
        Self { dynamic: VecDeque::new(), size: 0, max: 4096 }
    }
}

impl Hpack {
    pub fn decode(&mut self, mut block: &[u8]) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        while let Some(&first) = block.first() {
            if first & 0x80 != 0 {
                let index = int(&mut block, 7);
                fields.push(self.get(index));
            } else if first & 0x40 != 0 {
                let field = self.literal(&mut block, 6);
                self.insert(field.clone());
                fields.push(field);
            } else if first & 0x20 != 0 {
                self.max = int(&mut block, 5);
                self.evict();
            } else {
                fields.push(self.literal(&mut block, 4));
            }
        }
        fields
    }

    fn literal(&self, block: &mut &[u8], prefix: u32) -> (String, String) {
        let index = int(block, prefix);
        let name = if index == 0 { string(block) } else { self.get(index).0 };
        (name, string(block))
    }

    fn get(&self, index: usize) -> (String, String) {
        match index {
            1..=61 => {
                let (name, value) = STATIC_TABLE[index - 1];
                (name.to_owned(), value.to_owned())
            }
            _ => self.dynamic.get(index - 62).cloned().expect("HPACK index in the dynamic table"),
        }
    }

    fn insert(&mut self, field: (String, String)) {
        self.size += field.0.len() + field.1.len() + 32;
        self.dynamic.push_front(field);
        self.evict();
    }

    fn evict(&mut self) {
        while self.size > self.max {
            let (name, value) = self.dynamic.pop_back().expect("entries while over size");
            self.size -= name.len() + value.len() + 32;
        }
    }
}

fn int(block: &mut &[u8], prefix: u32) -> usize {
    let max = (1usize << prefix) - 1;
    let mut value = block[0] as usize & max;
    *block = &block[1..];
    if value < max {
        return value;
    }
    let mut shift = 0;
    loop {
        let byte = block[0];
        *block = &block[1..];
        value += ((byte & 0x7f) as usize) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return value;
        }
    }
}

fn string(block: &mut &[u8]) -> String {
    let huffman = block[0] & 0x80 != 0;
    let len = int(block, 7);
    let (raw, rest) = block.split_at(len);
    *block = rest;
    let bytes = if huffman { huffman_decode(raw) } else { raw.to_vec() };
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The abuse tests read statuses through [`Hpack`]: check it against the
/// RFC 7541 examples (C.4: Huffman-coded requests sharing a dynamic table).
#[test]
fn the_test_hpack_decoder_reads_the_rfc_examples() {
    let unhex = |hex: &str| -> Vec<u8> {
        let hex: String = hex.split_whitespace().collect();
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex")).collect()
    };
    let fields = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect()
    };
    let mut decoder = Hpack::default();
    assert_eq!(
        decoder.decode(&unhex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff")),
        fields(&[(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")])
    );
    assert_eq!(
        decoder.decode(&unhex("8286 84be 5886 a8eb 1064 9cbf")),
        fields(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
            ("cache-control", "no-cache")
        ])
    );
    assert_eq!(
        decoder.decode(&unhex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf")),
        fields(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/index.html"),
            (":authority", "www.example.com"),
            ("custom-key", "custom-value")
        ])
    );
}
