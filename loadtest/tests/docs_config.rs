//! docs/configuration.md cannot drift from the configuration types.
//!
//! The schema is read from the sources below: every struct deriving `Deserialize` (with
//! `#[serde(rename, rename_all, skip, default, try_from)]` honoured), every enum deriving it
//! (its variants' serde names), and the enums with a hand-written `Deserialize` whose names are
//! spelt `"name" => Type::Variant` (the Kubernetes roles). From the two roots, the agent's and the
//! gateway's `Config`, every key has a path and a type in the document's vocabulary (see
//! [`Schema::ty`]).
//!
//! The document is checked both ways:
//!
//! - Key tables (`| key | type | default | meaning |`), each announced by
//!   `<!-- keys: BINARIES [PREFIX] -->`: every key a row's key cell names is a field (no key that
//!   is not one: the keys Uplink accepts and ignores are fields too), the row's type is the one
//!   derived from the field's Rust type, a field without a default is documented as required,
//!   and every field of every configuration struct is named in some row.
//! - Examples (a ```yaml block after `<!-- example: BINARIES -->`), one right after each table:
//!   each, merged into a minimal valid file of its binary, passes the real binary's
//!   `--check-config`, and together they set every field of every configuration struct.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_yaml::Value;
use uplink_loadtest::harness::Bins;

const SOURCES: &[&str] = &[
    "agent/src/config.rs",
    "shared/src/http_client.rs",
    "shared/src/relabel.rs",
    "agent/src/receive.rs",
    "agent/src/discovery/file.rs",
    "agent/src/discovery/http.rs",
    "agent/src/discovery/dns.rs",
    "agent/src/discovery/kubernetes/config.rs",
    "gateway/src/config.rs",
    "gateway/src/ha.rs",
    "gateway/src/etcd.rs",
    "gateway/src/dedupe.rs",
    "shared/src/tls.rs",
    "shared/src/traces.rs",
    "shared/src/remote_write.rs",
];

/// The files' roots: (binary, source file, struct).
const ROOTS: &[(&str, &str, &str)] = &[
    ("agent", "agent/src/config.rs", "Config"),
    ("gateway", "gateway/src/config.rs", "Config"),
];

/// Deserialized structs that are not Uplink configuration: the kubeconfig file format (read as
/// kubectl writes it), an OAuth2 token response, the HA election record kept in etcd, and the
/// agent's partial reads of its own file (the `scrape_config_files` patterns for the reload
/// checksum, and the format of the files they name, whose jobs are `scrape_configs[]`).
const NOT_CONFIG: &[&str] = &[
    "Kubeconfig",
    "Named",
    "Cluster",
    "Context",
    "User",
    "Token",
    "Record",
    "Includes",
    "ScrapeConfigs",
];

/// What each example is merged into: the keys a file of that binary cannot do without.
const AGENT_BASE: &str = "
uplink:
  gateways: ['gateway.example.net:4443']
  tls: {cert_file: tls/agent.crt, key_file: tls/agent.key, ca_file: tls/ca.crt}
  queue: {directory: queue}
";
const GATEWAY_BASE: &str = "
listen_address: 0.0.0.0:4443
tls: {cert_file: tls/gateway.crt, key_file: tls/gateway.key, ca_file: tls/ca.crt}
storage: {directory: data}
remote_write: [{url: 'http://mimir:9009/api/v1/push'}]
";

/// The document's name of a Rust type that is not a struct or an enum of the sources.
fn scalar(name: &str) -> Option<&'static str> {
    Some(match name {
        "String" | "SocketAddr" => "string",
        "bool" => "bool",
        "u8" | "u16" | "u32" | "u64" | "usize" | "i32" | "i64" | "NonZeroU32" => "integer",
        "f64" => "float",
        "PathBuf" => "path",
        "PromDuration" => "duration",
        "ByteSize" => "size",
        "Secret" => "secret",
        // serde_yaml::Value: any YAML, accepted and ignored.
        "Value" => "any",
        // relabel.rs's untagged enum of YAML scalars, each taken as its text.
        "Scalar" => "string",
        _ => return None,
    })
}

/// A key's type, as the configuration file sees it.
#[derive(Clone, Debug, PartialEq)]
enum Ty {
    Scalar(&'static str),
    /// A nested mapping: index into `Schema::structs`.
    Section(usize),
    /// Serde names of the variants, in declaration order.
    Enum(Vec<String>),
    List(Box<Ty>),
    Map(Box<Ty>),
}

impl Ty {
    /// The type as docs/configuration.md writes it.
    fn doc(&self) -> String {
        match self {
            Ty::Scalar(s) => (*s).to_owned(),
            Ty::Section(_) => "section".into(),
            Ty::Enum(v) => format!("enum: {}", v.join(" | ")),
            Ty::List(t) => format!("list of {}", t.doc()),
            Ty::Map(t) => format!("map of {}", t.doc()),
        }
    }
}

#[derive(Debug)]
struct Field {
    /// The serde name.
    name: String,
    /// The Rust type as written.
    rust: String,
    /// Has a serde default (its own, its struct's, or an `Option`).
    defaulted: bool,
}

#[derive(Debug)]
struct Struct {
    file: &'static str,
    name: String,
    fields: Vec<Field>,
    /// `#[serde(try_from = "...")]`: the struct that is really deserialized.
    try_from: Option<String>,
}

#[derive(Debug)]
struct Enum {
    file: &'static str,
    name: String,
    variants: Vec<String>,
    untagged: bool,
}

/// `key = "value"` inside an attribute.
fn attr_value<'a>(attr: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("{key} = \"");
    let i = attr.find(&pat)?;
    attr[i + pat.len()..].split('"').next()
}

/// Whether an attribute holds the bare word (or `word = ...`).
fn attr_word(attr: &str, word: &str) -> bool {
    attr.split(['(', ')', ','])
        .map(str::trim)
        .any(|t| t == word || t.starts_with(&format!("{word} =")))
}

/// A name under `#[serde(rename_all = rule)]`.
fn renamed(ident: &str, rule: Option<&str>) -> String {
    let snake = || {
        let mut s = String::new();
        for (i, c) in ident.char_indices() {
            if c.is_uppercase() {
                if i > 0 && !ident[..i].ends_with('_') {
                    s.push('_');
                }
                s.extend(c.to_lowercase());
            } else {
                s.push(c);
            }
        }
        s
    };
    match rule {
        None => ident.to_owned(),
        Some("lowercase") => ident.to_lowercase(),
        Some("UPPERCASE") => ident.to_uppercase(),
        Some("snake_case") => snake(),
        Some("kebab-case") => snake().replace('_', "-"),
        Some("SCREAMING_SNAKE_CASE") => snake().to_uppercase(),
        Some(other) => panic!("rename_all = {other:?}: teach docs_config.rs"),
    }
}

fn is_ident(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn strip_vis(l: &str) -> &str {
    l.strip_prefix("pub(crate) ")
        .or_else(|| l.strip_prefix("pub "))
        .unwrap_or(l)
}

/// `Head<args>` as (`Head`'s last path segment, `args`).
fn generic(ty: &str) -> Option<(&str, &str)> {
    let open = ty.find('<')?;
    let args = ty[open + 1..].strip_suffix('>')?;
    Some((ty[..open].rsplit("::").next().unwrap_or(""), args))
}

/// Splits `K, V` at the comma outside angle brackets.
fn split_args(args: &str) -> (&str, &str) {
    let mut depth = 0;
    for (i, c) in args.char_indices() {
        match c {
            '<' => depth += 1,
            '>' => depth -= 1,
            ',' if depth == 0 => return (args[..i].trim(), args[i + 1..].trim()),
            _ => {}
        }
    }
    panic!("{args:?}: expected two type arguments")
}

#[derive(Default)]
struct Schema {
    structs: Vec<Struct>,
    enums: Vec<Enum>,
}

impl Schema {
    fn load(root: &Path) -> Schema {
        let mut s = Schema::default();
        for src in SOURCES {
            let text = std::fs::read_to_string(root.join(src)).unwrap();
            s.parse(src, &text);
        }
        assert!(
            s.structs.iter().map(|s| s.fields.len()).sum::<usize>() > 100,
            "the source scan is broken"
        );
        s
    }

    fn parse(&mut self, file: &'static str, text: &str) {
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let mut i = 0;
        while i < lines.len() {
            if !lines[i].starts_with("#[derive(") {
                i += 1;
                continue;
            }
            let mut attrs = Vec::new();
            let mut j = i + 1;
            while j < lines.len() && lines[j].starts_with("#[") {
                attrs.push(lines[j]);
                j += 1;
            }
            // `Deserialize` may be in a second `#[derive(...)]` of the same item.
            let derives = std::iter::once(lines[i])
                .chain(attrs.iter().copied())
                .any(|a| a.starts_with("#[derive(") && a.contains("Deserialize"));
            i = j;
            let header = strip_vis(lines.get(j).copied().unwrap_or(""));
            if !header.ends_with('{') {
                continue;
            }
            let serde: Vec<&str> = attrs
                .iter()
                .copied()
                .filter(|a| a.starts_with("#[serde("))
                .collect();
            let rule = serde.iter().find_map(|a| attr_value(a, "rename_all"));
            let body = lines[j + 1..]
                .iter()
                .take_while(|l| **l != "}")
                .copied()
                .collect::<Vec<_>>();
            if let Some(rest) = header.strip_prefix("struct ")
                && derives
            {
                let name = rest.split([' ', '<', '{']).next().unwrap_or("").to_owned();
                let all_default = serde.iter().any(|a| attr_word(a, "default"));
                let try_from = serde
                    .iter()
                    .find_map(|a| attr_value(a, "try_from"))
                    .map(str::to_owned);
                let fields = Self::fields(file, &name, &body, rule, all_default);
                self.structs.push(Struct {
                    file,
                    name,
                    fields,
                    try_from,
                });
            } else if let Some(rest) = header.strip_prefix("enum ") {
                let name = rest.split([' ', '<', '{']).next().unwrap_or("").to_owned();
                let manual = text.contains(&format!("Deserialize<'de> for {name} "));
                if !derives && !manual {
                    continue;
                }
                let variants = if derives {
                    Self::variants(&body, rule)
                } else {
                    // A hand-written Deserialize: the names its parser matches.
                    let arm = format!("=> {name}::");
                    lines
                        .iter()
                        .filter(|l| l.starts_with('"') && l.contains(&arm))
                        .filter_map(|l| l.split('"').nth(1).map(str::to_owned))
                        .collect()
                };
                assert!(
                    !variants.is_empty(),
                    "{file}: enum {name}: no variants found"
                );
                self.enums.push(Enum {
                    file,
                    name,
                    variants,
                    untagged: serde.iter().any(|a| attr_word(a, "untagged")),
                });
            }
        }
    }

    fn fields(
        file: &str,
        strukt: &str,
        body: &[&str],
        rule: Option<&str>,
        all_default: bool,
    ) -> Vec<Field> {
        let mut out = Vec::new();
        let (mut rename, mut skip, mut default) = (None, false, false);
        for l in body {
            if l.starts_with("#[serde(") {
                skip |= attr_word(l, "skip") || attr_word(l, "skip_deserializing");
                default |= attr_word(l, "default");
                assert!(
                    !attr_word(l, "flatten") || NOT_CONFIG.contains(&strukt),
                    "{file}: {strukt}: #[serde(flatten)]: teach docs_config.rs"
                );
                if let Some(r) = attr_value(l, "rename") {
                    rename = Some(r.to_owned());
                }
                continue;
            }
            if l.starts_with("//") || l.starts_with("#[") || l.is_empty() {
                continue;
            }
            let Some((ident, ty)) = strip_vis(l).split_once(':') else {
                continue;
            };
            if !is_ident(ident) {
                continue;
            }
            let rust = ty
                .trim()
                .strip_suffix(',')
                .unwrap_or_else(|| panic!("{file}: {strukt}.{ident}: a type on several lines"))
                .to_owned();
            if !skip {
                out.push(Field {
                    name: rename.take().unwrap_or_else(|| renamed(ident, rule)),
                    defaulted: default
                        || all_default
                        || generic(&rust).is_some_and(|g| g.0 == "Option"),
                    rust,
                });
            }
            (rename, skip, default) = (None, false, false);
        }
        out
    }

    fn variants(body: &[&str], rule: Option<&str>) -> Vec<String> {
        let mut out = Vec::new();
        let mut rename = None;
        for l in body {
            if l.starts_with("#[serde(") {
                if let Some(r) = attr_value(l, "rename") {
                    rename = Some(r.to_owned());
                }
                continue;
            }
            if l.starts_with("//") || l.starts_with("#[") || l.is_empty() {
                continue;
            }
            let ident = l.split([',', '(', ' ', '{']).next().unwrap_or("");
            if is_ident(ident) {
                out.push(rename.take().unwrap_or_else(|| renamed(ident, rule)));
            }
        }
        out
    }

    fn root(&self, binary: &str) -> Ty {
        let (_, file, name) = ROOTS.iter().find(|r| r.0 == binary).unwrap();
        let i = self
            .structs
            .iter()
            .position(|s| s.file == *file && s.name == *name)
            .unwrap();
        Ty::Section(i)
    }

    /// The struct or enum `name` names in `file`: one of that file's, else the only one.
    fn lookup(&self, name: &str, file: &str) -> Ty {
        let structs = |same: bool| {
            self.structs
                .iter()
                .enumerate()
                .filter(move |(_, s)| s.name == name && (!same || s.file == file))
                .map(|(i, _)| i)
                .collect::<Vec<_>>()
        };
        let enums = |same: bool| {
            self.enums
                .iter()
                .filter(move |e| e.name == name && (!same || e.file == file))
                .collect::<Vec<_>>()
        };
        let (mut s, mut e) = (structs(true), enums(true));
        if s.is_empty() && e.is_empty() {
            (s, e) = (structs(false), enums(false));
        }
        match (s.as_slice(), e.as_slice()) {
            ([i], []) => match &self.structs[*i].try_from {
                Some(raw) => self.lookup(raw, self.structs[*i].file),
                None => Ty::Section(*i),
            },
            ([], [en]) => {
                assert!(
                    !en.untagged,
                    "{}: untagged enum {name}: give it a name in scalar()",
                    en.file
                );
                Ty::Enum(en.variants.clone())
            }
            _ => panic!("{file}: type {name}: not found once in the sources (teach scalar()?)"),
        }
    }

    /// The document's type of the Rust type `rust`, written in `file`.
    fn ty(&self, rust: &str, file: &str) -> Ty {
        let rust = rust.trim();
        if let Some((head, args)) = generic(rust) {
            return match head {
                "Option" => self.ty(args, file),
                "Vec" => Ty::List(Box::new(self.ty(args, file))),
                "BTreeMap" | "HashMap" => {
                    let (k, v) = split_args(args);
                    assert_eq!(k, "String", "{file}: {rust}: map keys other than String");
                    Ty::Map(Box::new(self.ty(v, file)))
                }
                _ => panic!("{file}: {rust}: teach docs_config.rs"),
            };
        }
        let name = rust.rsplit("::").next().unwrap_or(rust);
        match scalar(name) {
            Some(s) => Ty::Scalar(s),
            None => self.lookup(name, file),
        }
    }

    fn field_ty(&self, s: usize, f: &Field) -> Ty {
        self.ty(&f.rust, self.structs[s].file)
    }

    /// The structs whose fields are configuration keys.
    fn config(&self) -> impl Iterator<Item = (usize, &Struct)> {
        self.structs
            .iter()
            .enumerate()
            .filter(|(_, s)| !NOT_CONFIG.contains(&s.name.as_str()) && s.try_from.is_none())
    }

    /// Every (struct, field) of the configuration.
    fn all_fields(&self) -> BTreeSet<(usize, String)> {
        self.config()
            .flat_map(|(i, s)| s.fields.iter().map(move |f| (i, f.name.clone())))
            .collect()
    }

    fn reachable(&self, ty: &Ty, seen: &mut BTreeSet<usize>) {
        match ty {
            Ty::Section(s) => {
                if seen.insert(*s) {
                    for f in &self.structs[*s].fields {
                        self.reachable(&self.field_ty(*s, f), seen);
                    }
                }
            }
            Ty::List(t) | Ty::Map(t) => self.reachable(t, seen),
            Ty::Scalar(_) | Ty::Enum(_) => {}
        }
    }

    /// Follows a key path (`tls.cert_file`, `static_configs[].targets`, `tenants.<id>.labels`)
    /// from `ty`: the last key's type and (struct, field).
    fn resolve(&self, mut ty: Ty, path: &[&str]) -> Result<(Ty, (usize, String)), String> {
        let mut last = None;
        for (n, seg) in path.iter().enumerate() {
            if seg.starts_with('<') && seg.ends_with('>') {
                let Ty::Map(v) = ty else {
                    return Err(format!("{seg}: {} is not a map", ty.doc()));
                };
                ty = *v;
                last = None;
                continue;
            }
            let (name, list) = match seg.strip_suffix("[]") {
                Some(s) => (s, true),
                None => (*seg, false),
            };
            let Ty::Section(s) = ty else {
                return Err(format!(
                    "{name}: a {} has no keys (a list is written `key[]`, a map `key.<id>`)",
                    ty.doc()
                ));
            };
            let st = &self.structs[s];
            let f = st
                .fields
                .iter()
                .find(|f| f.name == name)
                .ok_or_else(|| format!("{name}: no such key in {} ({})", st.name, st.file))?;
            ty = self.field_ty(s, f);
            last = Some((s, f.name.clone()));
            if list {
                let Ty::List(e) = ty.clone() else {
                    return Err(format!("{name}[]: {} is not a list", ty.doc()));
                };
                if n + 1 < path.len() {
                    ty = *e;
                }
            }
        }
        match last {
            Some(l) => Ok((ty, l)),
            None => Err("the path names no key".into()),
        }
    }

    /// Records the (struct, field) of every key `v` sets, read as a `ty`.
    fn cover(&self, v: &Value, ty: &Ty, at: &str, out: &mut BTreeSet<(usize, String)>) {
        match (ty, v) {
            (Ty::Section(s), Value::Mapping(m)) => {
                for (k, val) in m {
                    let k = k.as_str().unwrap_or_else(|| panic!("{at}: non-string key"));
                    let f = self.structs[*s]
                        .fields
                        .iter()
                        .find(|f| f.name == k)
                        .unwrap_or_else(|| panic!("{at}.{k}: no such key"));
                    out.insert((*s, k.to_owned()));
                    self.cover(val, &self.field_ty(*s, f), &format!("{at}.{k}"), out);
                }
            }
            (Ty::List(e), Value::Sequence(items)) => {
                for (i, item) in items.iter().enumerate() {
                    self.cover(item, e, &format!("{at}[{i}]"), out);
                }
            }
            (Ty::Map(e), Value::Mapping(m)) => {
                for (k, val) in m {
                    self.cover(val, e, &format!("{at}.{k:?}"), out);
                }
            }
            _ => {}
        }
    }

    fn describe(&self, (s, f): &(usize, String)) -> String {
        let st = &self.structs[*s];
        let field = st.fields.iter().find(|x| &x.name == f).unwrap();
        format!(
            "{}: {}.{f}: {}",
            st.file,
            st.name,
            self.field_ty(*s, field).doc()
        )
    }
}

/// A key table of the document.
struct Table {
    line: usize,
    binaries: Vec<String>,
    prefix: Vec<String>,
    rows: Vec<Row>,
    /// Whether a `<!-- example: ... -->` block follows right after it.
    example_follows: bool,
}

struct Row {
    line: usize,
    keys: Vec<String>,
    ty: String,
    default: String,
}

struct Example {
    line: usize,
    binaries: Vec<String>,
    yaml: String,
}

/// The cells of a table row, `\|` being a `|` inside a cell.
fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    let mut out = vec![String::new()];
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                out.last_mut().unwrap().push('|');
                chars.next();
            }
            '|' => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out.iter()
        .map(|c| c.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// The keys of a key cell: backticked paths separated by `,` or `/`; a key without a dot after
/// a dotted one shares its parent (`basic_auth.username`, `password`).
fn keys(cell: &str) -> Result<Vec<String>, String> {
    let parts: Vec<&str> = cell.split('`').collect();
    if parts.len() % 2 == 0 {
        return Err("unbalanced backticks".into());
    }
    let mut out = Vec::new();
    let mut parent = String::new();
    for (i, p) in parts.iter().enumerate() {
        if i % 2 == 0 {
            if !p.chars().all(|c| matches!(c, ',' | '/' | ' ')) {
                return Err(format!("prose {p:?} in the key cell"));
            }
        } else if let Some((par, _)) = p.rsplit_once('.') {
            parent = format!("{par}.");
            out.push((*p).to_owned());
        } else {
            out.push(format!("{parent}{p}"));
        }
    }
    if out.is_empty() {
        return Err("no key".into());
    }
    Ok(out)
}

/// `<!-- NAME: WORDS -->` as WORDS.
fn marker<'a>(line: &'a str, name: &str) -> Option<Vec<&'a str>> {
    let rest = line.trim().strip_prefix("<!--")?.trim_start();
    let rest = rest.strip_prefix(name)?.strip_prefix(':')?;
    Some(rest.strip_suffix("-->")?.split_whitespace().collect())
}

fn binaries(word: &str) -> Vec<String> {
    let out: Vec<String> = word.split(',').map(str::to_owned).collect();
    for b in &out {
        assert!(ROOTS.iter().any(|r| r.0 == b), "unknown binary {b:?}");
    }
    out
}

fn document() -> (Vec<Table>, Vec<Example>) {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let doc = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    let lines: Vec<&str> = doc.lines().collect();
    let next_text = |mut i: usize| {
        while i < lines.len() && lines[i].trim().is_empty() {
            i += 1;
        }
        i
    };
    let (mut tables, mut examples) = (Vec::new(), Vec::new());
    let mut announced = 0;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if let Some(words) = marker(line, "keys") {
            assert!(
                matches!(words.len(), 1 | 2),
                "configuration.md:{}: <!-- keys: BINARIES [PREFIX] -->",
                i + 1
            );
            let h = next_text(i + 1);
            assert_eq!(
                cells(lines.get(h).copied().unwrap_or("")),
                ["key", "type", "default", "meaning"],
                "configuration.md:{}: a keys marker must be followed by a key table",
                h + 1
            );
            announced += 1;
            let mut rows = Vec::new();
            let mut r = h + 2;
            while r < lines.len() && lines[r].trim_start().starts_with('|') {
                let c = cells(lines[r]);
                assert_eq!(c.len(), 4, "configuration.md:{}: four cells", r + 1);
                let keys = keys(&c[0])
                    .unwrap_or_else(|e| panic!("configuration.md:{}: key cell: {e}", r + 1));
                rows.push(Row {
                    line: r + 1,
                    keys,
                    ty: c[1].replace('`', ""),
                    default: c[2].clone(),
                });
                r += 1;
            }
            let after = next_text(r);
            tables.push(Table {
                line: h + 1,
                binaries: binaries(words[0]),
                prefix: words
                    .get(1)
                    .map(|p| p.split('.').map(str::to_owned).collect())
                    .unwrap_or_default(),
                rows,
                example_follows: lines
                    .get(after)
                    .is_some_and(|l| marker(l, "example").is_some()),
            });
            i = r;
            continue;
        }
        if let Some(words) = marker(line, "example") {
            assert_eq!(
                words.len(),
                1,
                "configuration.md:{}: <!-- example: BINARIES -->",
                i + 1
            );
            let f = next_text(i + 1);
            assert_eq!(
                lines.get(f).map(|l| l.trim()),
                Some("```yaml"),
                "configuration.md:{}: an example marker must be followed by a ```yaml block",
                f + 1
            );
            let body: Vec<&str> = lines[f + 1..]
                .iter()
                .take_while(|l| l.trim() != "```")
                .copied()
                .collect();
            examples.push(Example {
                line: f + 2,
                binaries: binaries(words[0]),
                yaml: body.join("\n"),
            });
            i = f + 1 + body.len();
            continue;
        }
        i += 1;
    }
    let headers = lines
        .iter()
        .filter(|l| cells(l).first().is_some_and(|c| c == "key"))
        .count();
    assert_eq!(
        headers, announced,
        "every key table needs a <!-- keys: BINARIES [PREFIX] --> line before it"
    );
    assert!(tables.len() >= 10 && examples.len() >= 10);
    (tables, examples)
}

#[test]
fn every_configuration_field_is_documented_with_its_type() {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let schema = Schema::load(root);
    let (tables, _) = document();
    let mut errors = Vec::new();
    let mut documented = BTreeSet::new();
    for t in &tables {
        if !t.example_follows {
            errors.push(format!(
                "configuration.md:{}: the table is not followed by an example block",
                t.line
            ));
        }
        for b in &t.binaries {
            let prefix: Vec<&str> = t.prefix.iter().map(String::as_str).collect();
            let base = if prefix.is_empty() {
                schema.root(b)
            } else {
                match schema.resolve(schema.root(b), &prefix) {
                    Ok((Ty::List(e), _)) if prefix.last().is_some_and(|p| p.ends_with("[]")) => *e,
                    Ok((ty, _)) => ty,
                    Err(e) => {
                        errors.push(format!("configuration.md:{}: {b}: prefix: {e}", t.line));
                        continue;
                    }
                }
            };
            for row in &t.rows {
                for key in &row.keys {
                    let path: Vec<&str> = key.split('.').collect();
                    match schema.resolve(base.clone(), &path) {
                        Err(e) => {
                            errors.push(format!("configuration.md:{}: {b}: `{key}`: {e}", row.line))
                        }
                        Ok((ty, field)) => {
                            if ty.doc() != row.ty {
                                errors.push(format!(
                                    "configuration.md:{}: `{key}` is documented as `{}`; its type is `{}` ({})",
                                    row.line,
                                    row.ty,
                                    ty.doc(),
                                    schema.describe(&field)
                                ));
                            }
                            let s = &schema.structs[field.0];
                            let f = s.fields.iter().find(|f| f.name == field.1).unwrap();
                            if !f.defaulted && !row.default.contains("required") {
                                errors.push(format!(
                                    "configuration.md:{}: `{key}` has no default: say \"required\"",
                                    row.line
                                ));
                            }
                            documented.insert(field);
                        }
                    }
                }
            }
        }
    }
    let mut reachable = BTreeSet::new();
    for (b, _, _) in ROOTS {
        schema.reachable(&schema.root(b), &mut reachable);
    }
    for (i, s) in schema.config() {
        if !reachable.contains(&i) {
            errors.push(format!(
                "{}: {} is not reachable from a configuration root (add it to NOT_CONFIG?)",
                s.file, s.name
            ));
        }
    }
    for f in schema.all_fields().difference(&documented) {
        errors.push(format!(
            "not in a key table of configuration.md: {}",
            schema.describe(f)
        ));
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// `over` merged into `base`: mappings key by key, anything else replaced.
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(bv) => merge(bv, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

#[test]
fn every_example_passes_check_config_and_the_examples_set_every_field() {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let schema = Schema::load(root);
    let (_, examples) = document();
    let bins = Bins::locate().expect("binaries built by cargo (cargo build --workspace)");
    let tmp = tempfile::tempdir().unwrap();
    let mut errors = Vec::new();
    let mut covered = BTreeSet::new();
    for ex in &examples {
        let fragment: Value = serde_yaml::from_str(&ex.yaml)
            .unwrap_or_else(|e| panic!("configuration.md:{}: {e}", ex.line));
        assert!(
            fragment.is_mapping(),
            "configuration.md:{}: an example is a mapping",
            ex.line
        );
        for b in &ex.binaries {
            schema.cover(&fragment, &schema.root(b), b, &mut covered);
            let (bin, base) = match b.as_str() {
                "agent" => (&bins.agent, AGENT_BASE),
                _ => (&bins.gateway, GATEWAY_BASE),
            };
            let mut file: Value = serde_yaml::from_str(base).unwrap();
            merge(&mut file, &fragment);
            let text = serde_yaml::to_string(&file).unwrap();
            let path = tmp.path().join(format!("example-{}-{b}.yml", ex.line));
            std::fs::write(&path, &text).unwrap();
            let out = Command::new(bin)
                .arg(format!("--config.file={}", path.display()))
                .arg("--check-config")
                .output()
                .unwrap();
            if !out.status.success() {
                errors.push(format!(
                    "configuration.md:{}: {b} --check-config: {}\n{text}",
                    ex.line,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
    }
    for f in schema.all_fields().difference(&covered) {
        errors.push(format!(
            "set in no example of configuration.md: {}",
            schema.describe(f)
        ));
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}
