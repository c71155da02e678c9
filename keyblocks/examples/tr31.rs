//! A tiny TR-31 command-line tool over the `keyblocks` crate, for poking at blocks
//! by hand and for end-to-end tests.
//!
//! ```text
//! tr31 wrap --kbpk HEX --header HEADER16 --key HEX [--masked-key-len N]
//! tr31 unwrap --kbpk HEX BLOCK
//! ```
//!
//! `wrap` prints the key block; `unwrap` prints `header=<first 16 chars> key=<HEX>`.
//! Any failure prints a message on stderr and exits non-zero. This is a development
//! tool: it prints clear keys on purpose and must never be pointed at production keys.

use std::process::ExitCode;

use keyblocks::Header;
use zeroize::Zeroizing;

const USAGE: &str = "usage:
  tr31 wrap --kbpk HEX --header HEADER16 --key HEX [--masked-key-len N]
  tr31 unwrap --kbpk HEX BLOCK";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("tr31: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Options after the sub-command: `--name value` pairs and positional arguments.
struct Options {
    named: Vec<(String, String)>,
    positional: Vec<String>,
}

impl Options {
    fn parse(args: &[String], known: &[&str]) -> Result<Options, String> {
        let mut named = Vec::new();
        let mut positional = Vec::new();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            if let Some(name) = arg.strip_prefix("--") {
                if !known.contains(&name) {
                    return Err(format!("unknown option --{name}\n{USAGE}"));
                }
                let value = it
                    .next()
                    .ok_or_else(|| format!("--{name} needs a value\n{USAGE}"))?;
                named.push((name.to_owned(), value.clone()));
            } else {
                positional.push(arg.clone());
            }
        }
        Ok(Options { named, positional })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.named
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn require(&self, name: &str) -> Result<&str, String> {
        self.get(name)
            .ok_or_else(|| format!("missing --{name}\n{USAGE}"))
    }
}

fn decode_secret(name: &str, hex_text: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    // The error names the option, never the value.
    hex::decode(hex_text)
        .map(Zeroizing::new)
        .map_err(|_| format!("--{name} is not valid hex"))
}

fn run(args: &[String]) -> Result<String, String> {
    let (command, rest) = args.split_first().ok_or_else(|| USAGE.to_owned())?;
    match command.as_str() {
        "wrap" => {
            let opts = Options::parse(rest, &["kbpk", "header", "key", "masked-key-len"])?;
            if !opts.positional.is_empty() {
                return Err(format!("unexpected argument for wrap\n{USAGE}"));
            }
            let kbpk = decode_secret("kbpk", opts.require("kbpk")?)?;
            let key = decode_secret("key", opts.require("key")?)?;
            let header =
                Header::parse_template(opts.require("header")?).map_err(|e| e.to_string())?;
            let masked = opts
                .get("masked-key-len")
                .map(|n| {
                    n.parse::<usize>()
                        .map_err(|_| "--masked-key-len is not a number".to_owned())
                })
                .transpose()?;
            keyblocks::wrap(&kbpk, &header, &key, masked).map_err(|e| e.to_string())
        }
        "unwrap" => {
            let opts = Options::parse(rest, &["kbpk"])?;
            let [block] = opts.positional.as_slice() else {
                return Err(format!("unwrap takes exactly one BLOCK\n{USAGE}"));
            };
            let kbpk = decode_secret("kbpk", opts.require("kbpk")?)?;
            let unwrapped = keyblocks::unwrap(&kbpk, block).map_err(|e| e.to_string())?;
            // unwrap succeeded, so the block has at least its 16 ASCII header chars.
            let fixed = block.get(..16).unwrap_or(block);
            Ok(format!(
                "header={fixed} key={}",
                hex::encode_upper(&unwrapped.key[..])
            ))
        }
        "-h" | "--help" | "help" => Err(USAGE.to_owned()),
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    }
}
