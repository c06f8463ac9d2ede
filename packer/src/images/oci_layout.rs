//! OCI image layouts (`oci-layout`, `index.json`, `blobs/sha256/…`), as a directory or an
//! uncompressed tar, read in place: a tar is indexed once and its blobs are served as slices of
//! the tar file. Also used for `docker save` output of moby ≥ 25, which is such a layout.

use super::oci::{Descriptor, IndexDoc};
use super::store::Slice;
use ferry_core::image_ref::ImageRef;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Names of the `index.json` annotations that tag an image.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI tag annotation.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The files of a directory or a tar.
pub enum Files {
    /// A directory.
    Dir(PathBuf),
    /// A tar, with the position of each regular file's data.
    Tar {
        /// The tar.
        path: PathBuf,
        /// Member path (without `./`) → (offset, size).
        members: HashMap<String, (u64, u64)>,
    },
}

/// A local image source (OCI layout or tar) that cannot be read as one.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The file or a member could not be read.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// `cannot open`, `reading`, …
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A tar that is not read in place.
    #[error("{} is {how}-compressed; decompress it first{hint}, ferry reads plain tars in place", path.display())]
    Compressed {
        /// The file.
        path: PathBuf,
        /// `gzip` or `zstd`.
        how: &'static str,
        /// The tool to use, when there is a usual one.
        hint: &'static str,
    },
    /// Not a tar, or an empty one.
    #[error("{} is not a tar or holds no files", .0.display())]
    NoFiles(PathBuf),
    /// The tar cannot be walked.
    #[error("{} is not {}tar: {source}", path.display(), if *.started { "a valid " } else { "a " })]
    NotTar {
        /// The file.
        path: PathBuf,
        /// Whether the walk had started (`not a valid tar`) or not (`not a tar`).
        started: bool,
        /// Why.
        source: std::io::Error,
    },
    /// A member could not be read.
    #[error("{rel}: {source}")]
    Member {
        /// The member.
        rel: String,
        /// Why.
        source: super::store::StoreError,
    },
    /// No `oci-layout` file.
    #[error("{0} is not an OCI image layout: it has no `oci-layout` file")]
    NotLayout(String),
    /// `oci-layout` or `index.json` is not what the spec says.
    #[error("{shown}: {file} is not {expected}: {source}")]
    BadJson {
        /// The source as written in the spec.
        shown: String,
        /// `` `oci-layout` `` or `index.json`.
        file: &'static str,
        /// `valid`, `an OCI index`.
        expected: &'static str,
        /// Why.
        source: serde_json::Error,
    },
    /// A layout version this packer does not read.
    #[error("{0}: imageLayoutVersion {1} is not supported (1.x is)")]
    Version(String, String),
    /// No `index.json`.
    #[error("{0} has no index.json")]
    NoIndex(String),
    /// `oci:PATH:TAG` names a tag the layout lacks.
    #[error("{shown} has no image tagged `{tag}` (it has: {names})")]
    NoTag {
        /// The source as written in the spec.
        shown: String,
        /// The tag asked for.
        tag: String,
        /// The tags it has.
        names: String,
    },
    /// Several images and none named as the reference.
    #[error("{shown} holds {count} images and none is named {want} (it has: {names}); write `oci:PATH:TAG` to choose")]
    NotNamed {
        /// The source as written in the spec.
        shown: String,
        /// Images in the layout.
        count: usize,
        /// The reference.
        want: String,
        /// The tags it has.
        names: String,
    },
    /// Several different images match.
    #[error("{0} names {1} different images alike; write `oci:PATH:TAG` to choose")]
    Ambiguous(String, usize),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LayoutError {
    let path = path.to_path_buf();
    move |source| LayoutError::Io { what, path, source }
}

impl Files {
    /// Opens a directory, or indexes a tar (uncompressed; compressed tars are refused with a hint).
    pub fn open(path: &Path) -> Result<Files, LayoutError> {
        if path.is_dir() {
            return Ok(Files::Dir(path.to_path_buf()));
        }
        let mut f = std::fs::File::open(path).map_err(io("cannot open", path))?;
        let mut magic = [0u8; 4];
        let n = f.read(&mut magic).map_err(io("reading", path))?;
        let compressed = |how, hint| LayoutError::Compressed { path: path.to_path_buf(), how, hint };
        if n >= 2 && magic[..2] == [0x1f, 0x8b] {
            return Err(compressed("gzip", " (gunzip)"));
        }
        if n >= 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
            return Err(compressed("zstd", ""));
        }
        let f = std::fs::File::open(path).map_err(io("cannot open", path))?;
        let mut archive = tar::Archive::new(f);
        let mut members = HashMap::new();
        let mut links: Vec<(String, String)> = Vec::new();
        let not_tar = |started| {
            let path = path.to_path_buf();
            move |source| LayoutError::NotTar { path, started, source }
        };
        let entries = archive.entries_with_seek().map_err(not_tar(false))?;
        for entry in entries {
            let entry = entry.map_err(not_tar(true))?;
            let name = clean(&entry.path().map_err(not_tar(true))?.to_string_lossy());
            let kind = entry.header().entry_type();
            if kind.is_file() {
                members.insert(name, (entry.raw_file_position(), entry.size()));
            } else if kind.is_symlink() || kind.is_hard_link() {
                // Legacy `docker save` links identical layers to one copy.
                if let Ok(Some(target)) = entry.link_name() {
                    let target = target.to_string_lossy().into_owned();
                    let resolved = if kind.is_symlink() {
                        let base =
                            Path::new(&name).parent().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
                        join_rel(&base, &target)
                    } else {
                        clean(&target)
                    };
                    links.push((name, resolved));
                }
            }
        }
        for (name, target) in links {
            if let Some(&m) = members.get(&target) {
                members.insert(name, m);
            }
        }
        if members.is_empty() {
            return Err(LayoutError::NoFiles(path.to_path_buf()));
        }
        Ok(Files::Tar { path: path.to_path_buf(), members })
    }

    /// Where member `rel` is, if present.
    pub fn locate(&self, rel: &str) -> Option<Slice> {
        match self {
            Files::Dir(root) => {
                let p = root.join(rel);
                let meta = std::fs::metadata(&p).ok()?;
                meta.is_file().then_some(Slice { path: p, offset: 0, size: meta.len() })
            }
            Files::Tar { path, members } => {
                members.get(rel).map(|&(offset, size)| Slice { path: path.clone(), offset, size })
            }
        }
    }

    /// Whether member `rel` exists.
    pub fn has(&self, rel: &str) -> bool {
        self.locate(rel).is_some()
    }

    /// A small member's bytes.
    pub fn read(&self, rel: &str, limit: u64) -> Result<Option<Vec<u8>>, LayoutError> {
        match self.locate(rel) {
            Some(s) => s.read(limit).map(Some).map_err(|source| LayoutError::Member { rel: rel.to_string(), source }),
            None => Ok(None),
        }
    }
}

fn clean(p: &str) -> String {
    p.trim_start_matches("./").trim_start_matches('/').to_string()
}

fn join_rel(base: &str, target: &str) -> String {
    let mut parts: Vec<&str> =
        if target.starts_with('/') { Vec::new() } else { base.split('/').filter(|s| !s.is_empty()).collect() };
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

/// An opened OCI image layout.
pub struct OciLayout {
    /// Its files.
    pub files: Files,
    /// Its `index.json`.
    pub index: IndexDoc,
    /// As written in the spec, for messages.
    pub shown: String,
}

impl OciLayout {
    /// Opens and checks a layout directory or tar.
    pub fn open(path: &Path, shown: &str) -> Result<OciLayout, LayoutError> {
        let files = Files::open(path)?;
        OciLayout::from_files(files, shown)
    }

    /// Checks `oci-layout` and reads `index.json`.
    pub fn from_files(files: Files, shown: &str) -> Result<OciLayout, LayoutError> {
        let layout = files.read("oci-layout", 1 << 16)?.ok_or_else(|| LayoutError::NotLayout(shown.to_string()))?;
        let bad =
            |file, expected| move |source| LayoutError::BadJson { shown: shown.to_string(), file, expected, source };
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct LayoutFile {
            image_layout_version: String,
        }
        let v: LayoutFile = serde_json::from_slice(&layout).map_err(bad("`oci-layout`", "valid"))?;
        if !v.image_layout_version.starts_with("1.") {
            return Err(LayoutError::Version(shown.to_string(), v.image_layout_version));
        }
        let index = files.read("index.json", 64 << 20)?.ok_or_else(|| LayoutError::NoIndex(shown.to_string()))?;
        let index: IndexDoc = serde_json::from_slice(&index).map_err(bad("index.json", "an OCI index"))?;
        Ok(OciLayout { files, index, shown: shown.to_string() })
    }

    /// Where blob `digest` is, if the layout has it.
    pub fn blob(&self, digest: &str) -> Option<Slice> {
        let (alg, hex) = digest.split_once(':')?;
        self.files.locate(&format!("blobs/{alg}/{hex}"))
    }

    /// The tags `index.json` offers, for messages.
    pub fn names(&self) -> Vec<String> {
        self.index
            .manifests
            .iter()
            .filter_map(|d| {
                d.annotations
                    .get(ANNOTATION_CONTAINERD_NAME)
                    .or_else(|| d.annotations.get(ANNOTATION_REF_NAME))
                    .cloned()
            })
            .collect()
    }

    /// Picks the image: by `tag` (`oci:PATH:TAG`) when given, else by the reference itself
    /// (containerd's full-name annotation first, then the OCI tag annotation), else the only image.
    pub fn select(&self, image: &ImageRef, tag: Option<&str>) -> Result<Descriptor, LayoutError> {
        let m = &self.index.manifests;
        let by = |pred: &dyn Fn(&Descriptor) -> bool| m.iter().filter(|d| pred(d)).cloned().collect::<Vec<_>>();
        let containerd_is = |d: &Descriptor, want: &str| {
            d.annotations
                .get(ANNOTATION_CONTAINERD_NAME)
                .and_then(|n| ImageRef::parse(n).ok())
                .is_some_and(|r| r.to_string() == want)
        };
        let ref_name_is =
            |d: &Descriptor, want: &str| d.annotations.get(ANNOTATION_REF_NAME).is_some_and(|n| n == want);
        let candidates = match tag {
            Some(t) => {
                let full = ImageRef::parse(t).map(|r| r.to_string()).unwrap_or_default();
                let hits = by(&|d| ref_name_is(d, t) || (!full.is_empty() && containerd_is(d, &full)));
                if hits.is_empty() {
                    return Err(LayoutError::NoTag {
                        shown: self.shown.clone(),
                        tag: t.to_string(),
                        names: self.names_or_none(),
                    });
                }
                hits
            }
            None => {
                let want = image.to_string();
                let mut hits = by(&|d| containerd_is(d, &want));
                if hits.is_empty()
                    && let Some(t) = image.tag.as_deref()
                {
                    hits = by(&|d| ref_name_is(d, t) || ref_name_is(d, &want));
                }
                if hits.is_empty() && m.len() == 1 {
                    hits = m.clone();
                }
                if hits.is_empty() {
                    return Err(LayoutError::NotNamed {
                        shown: self.shown.clone(),
                        count: m.len(),
                        want,
                        names: self.names_or_none(),
                    });
                }
                hits
            }
        };
        let first = &candidates[0];
        if candidates.iter().any(|c| c.digest != first.digest) {
            return Err(LayoutError::Ambiguous(self.shown.clone(), candidates.len()));
        }
        Ok(first.clone())
    }

    fn names_or_none(&self) -> String {
        let n = self.names();
        if n.is_empty() { "no tagged images".into() } else { n.join(", ") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_links() {
        assert_eq!(join_rel("abc", "../def/layer.tar"), "def/layer.tar");
        assert_eq!(join_rel("", "blobs/sha256/x"), "blobs/sha256/x");
        assert_eq!(clean("./index.json"), "index.json");
    }

    fn layout_with(index: &str) -> OciLayout {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        std::fs::write(dir.path().join("index.json"), index).unwrap();
        let l = OciLayout::open(dir.path(), "oci:x").unwrap();
        std::mem::forget(dir);
        l
    }

    #[test]
    fn selection() {
        let d1 = format!("sha256:{}", "1".repeat(64));
        let d2 = format!("sha256:{}", "2".repeat(64));
        let l = layout_with(&format!(
            r#"{{"schemaVersion":2,"manifests":[
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d1}","size":1,"annotations":{{"io.containerd.image.name":"docker.io/library/a:1","org.opencontainers.image.ref.name":"1"}}}},
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d2}","size":1,"annotations":{{"org.opencontainers.image.ref.name":"two"}}}}]}}"#
        ));
        let a = ImageRef::parse("a:1").unwrap();
        assert_eq!(l.select(&a, None).unwrap().digest, d1);
        assert_eq!(l.select(&a, Some("two")).unwrap().digest, d2);
        let e = l.select(&ImageRef::parse("quay.io/other:9").unwrap(), None).unwrap_err().to_string();
        assert!(e.contains("none is named quay.io/other:9") && e.contains("docker.io/library/a:1, two"), "{e}");
        assert!(l.select(&a, Some("nope")).unwrap_err().to_string().contains("no image tagged `nope`"));
        let single = layout_with(&format!(r#"{{"schemaVersion":2,"manifests":[{{"digest":"{d1}","size":1}}]}}"#));
        assert_eq!(single.select(&ImageRef::parse("whatever:1").unwrap(), None).unwrap().digest, d1);
    }

    #[test]
    fn not_a_layout() {
        let dir = tempfile::tempdir().unwrap();
        let e = OciLayout::open(dir.path(), "oci:empty").err().unwrap().to_string();
        assert!(e.contains("oci:empty is not an OCI image layout"), "{e}");
        let gz = dir.path().join("x.tar.gz");
        std::fs::write(&gz, [0x1f, 0x8b, 8, 0, 0, 0]).unwrap();
        assert!(Files::open(&gz).err().unwrap().to_string().contains("gzip"));
    }
}
