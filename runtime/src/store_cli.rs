//! `grafos store put|get|ls|rm`: the object store of a running instance
//! from the command line (the instance is the one each URI names).

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use grafos_worker::FabricError;
use grafos_worker::store::{FabricUri, MemObjectStore, ObjectStore, PutOptions};

/// Buckets of a store made by `grafos store put` in an instance that has
/// none yet.
const CLI_STORE_BUCKETS: u64 = 4096;

/// What `grafos store` does.
#[derive(Subcommand)]
pub enum StoreAction {
    /// Store FILE's bytes at URI (`-` reads stdin); makes the instance's
    /// store if it has none.
    Put {
        /// `fabric://<instance>/<bucket>/<key>`.
        uri: String,
        /// The file to store, or `-` for stdin.
        file: PathBuf,
        /// MIME type recorded with the object.
        #[arg(long)]
        content_type: Option<String>,
        /// Seconds after which the object is gone.
        #[arg(long)]
        ttl_secs: Option<u64>,
    },
    /// Write the object at URI to stdout, or to FILE with -o; exits 1 if
    /// there is none.
    Get {
        /// `fabric://<instance>/<bucket>/<key>`.
        uri: String,
        /// Write here instead of stdout.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
    },
    /// List the objects whose URI starts with PREFIX
    /// (`fabric://<instance>/` lists them all), one URI per line with its
    /// size.
    ///
    /// With `--checksum` each line also has the CRC-32 of the object's
    /// bytes (`crc32:` and 8 hex digits); with `--content`, its bytes as
    /// text (UTF-8, invalid bytes replaced; backslash, tab, carriage
    /// return and newline escaped as `\\`, `\t`, `\r`, `\n`). Tab-separated.
    Ls {
        /// `fabric://<instance>/[<bucket>/[<key prefix>]]`.
        prefix: String,
        /// Add each object's CRC-32.
        #[arg(long)]
        checksum: bool,
        /// Add each object's bytes, escaped as text.
        #[arg(long)]
        content: bool,
    },
    /// Remove the object at URI; exits 1 if there was none.
    Rm {
        /// `fabric://<instance>/<bucket>/<key>`.
        uri: String,
    },
}

/// Runs a store command; `Ok(false)` when the object asked for is absent.
///
/// # Errors
/// A one-line reason: a malformed URI (naming the part and the rule), no
/// store or no supervisor in the instance, an I/O error.
pub fn run(action: StoreAction) -> Result<bool, String> {
    match action {
        StoreAction::Put {
            uri,
            file,
            content_type,
            ttl_secs,
        } => {
            let uri = parse(&uri)?;
            let data = read_input(&file)?;
            let store = MemObjectStore::new_in(uri.instance(), CLI_STORE_BUCKETS).map_err(text)?;
            let opts = PutOptions {
                ttl: ttl_secs.map(std::time::Duration::from_secs),
                content_type,
            };
            let meta = store.put(&uri, &data, Some(opts)).map_err(text)?;
            eprintln!("stored {uri} ({} bytes)", meta.size);
            Ok(true)
        }
        StoreAction::Get { uri, output } => {
            let uri = parse(&uri)?;
            let Some(data) = open(uri.instance())?.get(&uri).map_err(text)? else {
                eprintln!("grafos: no object at {uri}");
                return Ok(false);
            };
            match output {
                Some(path) => std::fs::write(&path, &data)
                    .map_err(|e| format!("writing {}: {e}", path.display()))?,
                None => {
                    let mut out = std::io::stdout().lock();
                    if let Err(e) = out.write_all(&data).and_then(|()| out.flush())
                        && e.kind() != std::io::ErrorKind::BrokenPipe
                    {
                        return Err(format!("writing to stdout: {e}"));
                    }
                }
            }
            Ok(true)
        }
        StoreAction::Ls {
            prefix,
            checksum,
            content,
        } => {
            let (instance, key_prefix) = parse_prefix(&prefix)?;
            let store = open(&instance)?;
            let mut out = std::io::stdout().lock();
            for uri in store.list(&key_prefix).map_err(text)? {
                let uri = uri.map_err(text)?;
                let mut line = String::new();
                if checksum || content {
                    // Gone since it was listed (replaced or removed): skip.
                    let Some(bytes) = store.get(&uri).map_err(text)? else {
                        continue;
                    };
                    line = format!("{uri}\t{}", bytes.len());
                    if checksum {
                        line += &format!("\tcrc32:{:08x}", crc32fast::hash(&bytes));
                    }
                    if content {
                        line.push('\t');
                        line += &escape(&String::from_utf8_lossy(&bytes));
                    }
                } else if let Some(meta) = store.head(&uri).map_err(text)? {
                    line = format!("{uri}\t{}", meta.size);
                }
                if line.is_empty() {
                    continue;
                }
                if let Err(e) = writeln!(out, "{line}") {
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        break;
                    }
                    return Err(format!("writing to stdout: {e}"));
                }
            }
            Ok(true)
        }
        StoreAction::Rm { uri } => {
            let uri = parse(&uri)?;
            if open(uri.instance())?.delete(&uri).map_err(text)? {
                Ok(true)
            } else {
                eprintln!("grafos: no object at {uri}");
                Ok(false)
            }
        }
    }
}

/// `text` with backslash, tab, carriage return and newline escaped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out += "\\\\",
            '\t' => out += "\\t",
            '\r' => out += "\\r",
            '\n' => out += "\\n",
            c => out.push(c),
        }
    }
    out
}

fn text(e: FabricError) -> String {
    e.to_string()
}

fn parse(uri: &str) -> Result<FabricUri, String> {
    uri.parse().map_err(|e| format!("bad URI: {e}"))
}

/// `fabric://<instance>/<bucket>/<key prefix>` with the bucket and key
/// optional: the instance and the `<bucket>/<key prefix>` to match.
fn parse_prefix(prefix: &str) -> Result<(String, String), String> {
    let rest = prefix
        .strip_prefix(grafos_worker::store::SCHEME)
        .ok_or_else(|| format!("bad prefix {prefix:?}: it must start with fabric://"))?;
    let (instance, keys) = rest.split_once('/').unwrap_or((rest, ""));
    grafos_worker::segment::validate_instance(instance)
        .map_err(|e| format!("bad prefix {prefix:?}: {e}"))?;
    Ok((instance.to_string(), keys.to_string()))
}

fn open(instance: &str) -> Result<MemObjectStore, String> {
    MemObjectStore::open_in(instance).map_err(|e| match e {
        FabricError::NotFound(_) => format!("instance {instance:?} has no object store yet"),
        e => e.to_string(),
    })
}

fn read_input(file: &Path) -> Result<Vec<u8>, String> {
    if file == Path::new("-") {
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut data)
            .map_err(|e| format!("reading stdin: {e}"))?;
        return Ok(data);
    }
    std::fs::read(file).map_err(|e| format!("reading {}: {e}", file.display()))
}
