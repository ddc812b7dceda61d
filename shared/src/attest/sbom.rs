//! The SBOM: packages from an image's dpkg database (`/var/lib/dpkg/status` and
//! `/var/lib/dpkg/info/*.list`) and apk database (`/lib/apk/db/installed`), with the files
//! they own, as an SPDX 2.3 JSON document. Pure: the agent reads the image's layers and hands
//! over the database files and every regular file's hashes.

use serde_json::{json, Value};
use sha1::Digest as _;
use std::collections::{BTreeMap, BTreeSet};

pub const DPKG_STATUS: &str = "var/lib/dpkg/status";
pub const DPKG_INFO: &str = "var/lib/dpkg/info/";
pub const APK_INSTALLED: &str = "lib/apk/db/installed";

/// Whether an image path (relative, no leading `/`) is a package database file the scan keeps.
pub fn is_database(path: &str) -> bool {
    path == DPKG_STATUS
        || path == APK_INSTALLED
        || (path.starts_with(DPKG_INFO) && path.ends_with(".list") && !path[DPKG_INFO.len()..].contains('/'))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Deb,
    Apk,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    pub kind: Kind,
    pub name: String,
    pub version: String,
    pub arch: String,
    /// Paths the package owns (relative, no leading `/`), as its database lists them.
    pub files: Vec<String>,
}

/// A regular file's hashes (hex).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FileHashes {
    pub sha1: String,
    pub sha256: String,
}

fn paragraphs(text: &str) -> impl Iterator<Item = &str> {
    text.split("\n\n").filter(|p| !p.trim().is_empty())
}

/// The installed packages of a dpkg status file; `lists` maps each `info/NAME[:ARCH].list`
/// file's name (without `.list`) to its text.
pub fn dpkg_packages(status: &str, lists: &BTreeMap<String, String>) -> Vec<Package> {
    let mut out = Vec::new();
    for p in paragraphs(status) {
        let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
        for line in p.lines() {
            // Continuation lines (a description's) start with a space.
            if line.starts_with(' ') || line.starts_with('\t') {
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                fields.insert(k.trim(), v.trim());
            }
        }
        let (Some(name), Some(status)) = (fields.get("Package"), fields.get("Status")) else { continue };
        if status.split_whitespace().last() != Some("installed") {
            continue;
        }
        let arch = fields.get("Architecture").copied().unwrap_or_default();
        let list = lists.get(&format!("{name}:{arch}")).or_else(|| lists.get(*name));
        let files =
            list.map(|l| l.lines().map(|f| f.trim().trim_start_matches('/').to_string()).filter(|f| !f.is_empty() && f != ".").collect());
        out.push(Package {
            kind: Kind::Deb,
            name: name.to_string(),
            version: fields.get("Version").copied().unwrap_or_default().to_string(),
            arch: arch.to_string(),
            files: files.unwrap_or_default(),
        });
    }
    out
}

/// The packages of an apk `installed` database (`P:` name, `V:` version, `A:` arch, `F:` a
/// directory and `R:` a file in it).
pub fn apk_packages(installed: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for p in paragraphs(installed) {
        let mut pkg = Package { kind: Kind::Apk, name: String::new(), version: String::new(), arch: String::new(), files: vec![] };
        let mut dir = String::new();
        for line in p.lines() {
            let Some((k, v)) = line.split_once(':') else { continue };
            match k {
                "P" => pkg.name = v.to_string(),
                "V" => pkg.version = v.to_string(),
                "A" => pkg.arch = v.to_string(),
                "F" => dir = v.trim_matches('/').to_string(),
                "R" if dir.is_empty() => pkg.files.push(v.to_string()),
                "R" => pkg.files.push(format!("{dir}/{v}")),
                _ => {}
            }
        }
        if !pkg.name.is_empty() {
            out.push(pkg);
        }
    }
    out
}

/// Every package the database files found in an image describe.
pub fn packages(databases: &BTreeMap<String, Vec<u8>>) -> Vec<Package> {
    let text = |p: &str| databases.get(p).map(|b| String::from_utf8_lossy(b).into_owned());
    let mut out = Vec::new();
    if let Some(status) = text(DPKG_STATUS) {
        let lists: BTreeMap<String, String> = databases
            .iter()
            .filter_map(|(p, b)| {
                let name = p.strip_prefix(DPKG_INFO)?.strip_suffix(".list")?;
                Some((name.to_string(), String::from_utf8_lossy(b).into_owned()))
            })
            .collect();
        out.extend(dpkg_packages(&status, &lists));
    }
    if let Some(installed) = text(APK_INSTALLED) {
        out.extend(apk_packages(&installed));
    }
    out
}

/// A Package URL's version part: `:` (a Debian epoch) and other reserved characters escaped.
fn purl_escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' | '~' | '+' => c.to_string(),
            _ => format!("%{:02X}", c as u32 & 0xff),
        })
        .collect()
}

/// An SPDX id (`[A-Za-z0-9.-]+` after `SPDXRef-`), unique thanks to the hash of what it names.
fn spdx_id(prefix: &str, name: &str, unique: &str) -> String {
    let clean: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' }).collect();
    let h = hex::encode(&sha2::Sha256::digest(unique.as_bytes())[..8]);
    format!("SPDXRef-{prefix}-{clean}-{h}")
}

/// The SPDX 2.3 document: every package, the files it owns that are regular files in the
/// image (`files`: path → hashes), and how they relate.
pub fn spdx(name: &str, namespace: &str, created: &str, packages: &[Package], files: &BTreeMap<String, FileHashes>) -> Value {
    let mut spdx_packages = Vec::new();
    let mut spdx_files = Vec::new();
    let mut relationships = Vec::new();
    let mut listed: BTreeSet<String> = BTreeSet::new();
    for p in packages {
        let (kind, ns) = match p.kind {
            Kind::Deb => ("deb", "debian"),
            Kind::Apk => ("apk", "alpine"),
        };
        let id = spdx_id("Package", &format!("{kind}-{}", p.name), &format!("{kind}/{}/{}/{}", p.name, p.version, p.arch));
        let mut owned: Vec<(&String, &FileHashes)> = p.files.iter().filter_map(|f| files.get_key_value(f)).collect();
        owned.sort();
        owned.dedup();
        let mut package = json!({
            "name": p.name,
            "SPDXID": id,
            "versionInfo": p.version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": !owned.is_empty(),
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "primaryPackagePurpose": "LIBRARY",
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": format!("pkg:{kind}/{ns}/{}@{}?arch={}", purl_escape(&p.name), purl_escape(&p.version), purl_escape(&p.arch)),
            }],
        });
        if !owned.is_empty() {
            // SPDX 2.3 §7.9: the SHA-1 of the sorted, concatenated SHA-1s of the package's files.
            let mut sums: Vec<&str> = owned.iter().map(|(_, h)| h.sha1.as_str()).collect();
            sums.sort();
            let code = hex::encode(sha1::Sha1::digest(sums.concat().as_bytes()));
            package["packageVerificationCode"] = json!({ "packageVerificationCodeValue": code });
        }
        relationships.push(json!({ "spdxElementId": "SPDXRef-DOCUMENT", "relatedSpdxElement": id, "relationshipType": "DESCRIBES" }));
        for (path, h) in owned {
            let file_id = spdx_id("File", path.rsplit('/').next().unwrap_or(path), path);
            if listed.insert(path.clone()) {
                spdx_files.push(json!({
                    "fileName": format!("./{path}"),
                    "SPDXID": file_id,
                    "checksums": [
                        { "algorithm": "SHA1", "checksumValue": h.sha1 },
                        { "algorithm": "SHA256", "checksumValue": h.sha256 },
                    ],
                    "licenseConcluded": "NOASSERTION",
                    "copyrightText": "NOASSERTION",
                }));
            }
            relationships.push(json!({ "spdxElementId": id, "relatedSpdxElement": file_id, "relationshipType": "CONTAINS" }));
        }
        spdx_packages.push(package);
    }
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        "documentNamespace": namespace,
        "creationInfo": {
            "creators": [format!("Tool: kiln-{}", env!("CARGO_PKG_VERSION"))],
            "created": created,
        },
        "packages": spdx_packages,
        "files": spdx_files,
        "relationships": relationships,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Package: hello\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1:2.10-3\nDescription: hi\n more text\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1\n\nPackage: libx\nStatus: install ok installed\nArchitecture: amd64\nVersion: 0.1\n";

    #[test]
    fn dpkg_lists_installed_packages_and_their_files() {
        let lists: BTreeMap<String, String> =
            [("hello".to_string(), "/.\n/usr\n/usr/bin/hello\n".to_string()), ("libx:amd64".to_string(), "/usr/lib/libx.so\n".to_string())]
                .into();
        let p = dpkg_packages(STATUS, &lists);
        assert_eq!(p.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["hello", "libx"]);
        assert_eq!(p[0].version, "1:2.10-3");
        assert_eq!(p[0].files, ["usr", "usr/bin/hello"]);
        assert_eq!(p[1].files, ["usr/lib/libx.so"]);
    }

    #[test]
    fn apk_lists_packages_and_files() {
        let db = "C:Q1abc=\nP:musl\nV:1.2.4-r2\nA:x86_64\nF:lib\nR:ld-musl-x86_64.so.1\nR:libc.musl-x86_64.so.1\n\nP:busybox\nV:1.36\nA:x86_64\nF:bin\nR:busybox\n";
        let p = apk_packages(db);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].files, ["lib/ld-musl-x86_64.so.1", "lib/libc.musl-x86_64.so.1"]);
        assert_eq!(p[1].name, "busybox");
    }

    #[test]
    fn the_document_lists_owned_regular_files_only() {
        let lists: BTreeMap<String, String> = [("hello".to_string(), "/usr\n/usr/bin/hello\n".to_string())].into();
        let p = dpkg_packages(STATUS, &lists);
        let files: BTreeMap<String, FileHashes> =
            [("usr/bin/hello".to_string(), FileHashes { sha1: "a".repeat(40), sha256: "b".repeat(64) })].into();
        let doc = spdx("img", "https://kiln.invalid/spdx/x", "2024-01-01T00:00:00Z", &p, &files);
        assert_eq!(doc["spdxVersion"], "SPDX-2.3");
        assert_eq!(doc["packages"].as_array().map(Vec::len), Some(2));
        assert_eq!(doc["files"][0]["fileName"], "./usr/bin/hello");
        assert_eq!(doc["packages"][0]["filesAnalyzed"], true);
        assert_eq!(doc["packages"][1]["filesAnalyzed"], false);
        assert_eq!(doc["packages"][0]["externalRefs"][0]["referenceLocator"], "pkg:deb/debian/hello@1%3A2.10-3?arch=amd64");
        let contains = doc["relationships"].as_array().unwrap().iter().filter(|r| r["relationshipType"] == "CONTAINS").count();
        assert_eq!(contains, 1);
    }
}
