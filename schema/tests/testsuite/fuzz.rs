//! The validator never panics, whatever it is fed, and every problem it reports points inside
//! the file it names. Inputs: the example domain mutated many ways (deterministic xorshift, so a
//! failure reproduces), plus arbitrary bytes.

use schema::tree::MemTree;

use crate::example::{ACCOUNTS, DOMAIN, POLICIES};

/// Fragments that steer mutations toward interesting TOML.
const TOKENS: &[&str] = &[
    "[",
    "]",
    "[[",
    "]]",
    "=",
    "\"",
    "'",
    "\"\"\"",
    ",",
    "{",
    "}",
    ".",
    "\n",
    "#",
    "\\u00e9",
    "é",
    "0x",
    "-",
    "1e999",
    "99999999999999999999",
    "true",
    "[servers.x]",
    "port = ",
    "listen = ",
    "targets = [\"nope\"]",
    "[applications.z]\nkind = \"static\"\n",
    "\0",
    "\r\n",
    "\u{FEFF}",
    "1979-05-27T07:32:00Z",
    "inf",
    "nan",
    "[servers.server1.web.listeners.http]",
];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, input: &str) -> Vec<u8> {
    let mut bytes = input.as_bytes().to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(bytes.len() + 1);
        match rng.below(6) {
            0 if !bytes.is_empty() => {
                let i = at.min(bytes.len() - 1);
                bytes[i] = rng.next() as u8;
            }
            1 => {
                let end = (at + rng.below(40)).min(bytes.len());
                bytes.drain(at..end);
            }
            2 | 3 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                bytes.splice(at..at, t.bytes());
            }
            4 => {
                // Duplicate a line: duplicate keys and tables.
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let lines: Vec<&str> = text.lines().collect();
                if !lines.is_empty() {
                    let line = lines[rng.below(lines.len())].to_owned();
                    bytes.splice(at..at, format!("\n{line}\n").bytes());
                }
            }
            _ => bytes.truncate(at),
        }
    }
    bytes
}

fn check(tree: &MemTree) {
    let v = schema::validate(tree);
    for p in &v.report.problems {
        if let Some(span) = &p.span {
            let text = &v.report.files[&p.file].text;
            assert!(
                span.start <= text.len() && span.end <= text.len() + 1,
                "span {span:?} outside {}",
                p.file
            );
        }
        assert!(!p.message.is_empty());
    }
    // Rendering must not panic either, in every format.
    let _ = v.report.render_human(false);
    let _ = v.report.render_github();
    let _ = v.report.to_json();
    if let Some(l) = &v.loaded {
        let _ = schema::plan::plan(None, l).render_human();
    }
}

fn tree(domain: Vec<u8>, accounts: Vec<u8>, policies: Vec<u8>) -> MemTree {
    crate::example::tree("fuzz", domain, accounts, policies, "x")
}

#[test]
fn the_example_is_valid() {
    let t = tree(DOMAIN.into(), ACCOUNTS.into(), POLICIES.into());
    let v = schema::validate(&t);
    assert!(
        v.report.problems.is_empty(),
        "{}",
        v.report.render_human(false)
    );
}

#[test]
fn mutated_domains_never_panic() {
    let iterations: u64 = std::env::var("STEWARD_FUZZ_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1500);
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let mut invalid = 0;
    for _ in 0..iterations {
        let which = rng.below(3);
        let t = match which {
            0 => tree(mutate(&mut rng, DOMAIN), ACCOUNTS.into(), POLICIES.into()),
            1 => tree(DOMAIN.into(), mutate(&mut rng, ACCOUNTS), POLICIES.into()),
            _ => tree(DOMAIN.into(), ACCOUNTS.into(), mutate(&mut rng, POLICIES)),
        };
        check(&t);
        invalid += usize::from(!schema::validate(&t).report.is_valid());
    }
    // The mutator must actually reach the error paths, or this test proves nothing.
    assert!(
        invalid as u64 > iterations / 4,
        "only {invalid} of {iterations} mutations were invalid"
    );
}

#[test]
fn arbitrary_bytes_never_panic() {
    let mut rng = Rng(42);
    for _ in 0..300 {
        let len = rng.below(400);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        check(&tree(bytes.clone(), bytes.clone(), bytes));
    }
}
