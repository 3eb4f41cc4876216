//! Property test of `unpack_layer` on raw tar header blocks. It generates V7, ustar and GNU
//! headers field by field, each followed by its data: names with `..`, NULs and more than 100
//! bytes, octal, base-256 and garbage numbers, any type flag, PAX and GNU long-name records,
//! and wrong sizes and checksums. Whatever the input, the unpacker must not panic and must
//! write nothing outside the destination.
//!
//! The case count comes from `PROPTEST_CASES` (256 by default); scripts/fuzz runs this test
//! with many more cases. A failing input is saved as a seed line in
//! `fuzz_tar_header.proptest-regressions` beside this file, and every later run replays it.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use mayfly_image::digest::Digest;
use mayfly_image::unpack::{unpack_layer, Compression, UnpackOptions};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

const BLOCK: usize = 512;

/// Prefix of every ordinary name the generator uses, so that an entry that escaped into the
/// system temporary directory can be recognised there.
const MARKER: &str = "mfz-";

/// Link target replaced by the absolute path of a file outside the destination.
const CANARY_TARGET: &str = "@canary";

const CANARY_CONTENT: &[u8] = b"canary: must stay unchanged";

/// Directories between the scratch root and the destination, so that an entry climbing out
/// by up to this many levels lands where the test looks for it.
const DEPTH: [&str; 3] = ["a", "b", "c"];

/// Header layout of one tar format.
#[derive(Clone, Copy, Debug)]
enum Format {
    /// No magic, no owner names, no prefix.
    V7,
    /// POSIX ustar: magic `ustar\0`, version `00`, a 155-byte name prefix.
    Ustar,
    /// GNU tar: magic `ustar `, version ` \0`, no prefix.
    Gnu,
}

/// Encoding of a numeric header field.
#[derive(Clone, Debug)]
enum Number {
    Octal(u64),
    /// GNU base-256: the first byte has its high bit set; `0xff` makes it negative.
    Binary {
        negative: bool,
        value: u64,
    },
    Garbage(Vec<u8>),
}

#[derive(Clone, Debug)]
enum Checksum {
    Correct,
    Wrong(u32),
}

/// How many bytes the size field declares, relative to the data that follows.
#[derive(Clone, Debug)]
enum SizeField {
    Exact,
    Declared(Number),
}

#[derive(Clone, Debug)]
struct RawEntry {
    format: Format,
    name: Vec<u8>,
    mode: Number,
    uid: Number,
    gid: Number,
    size: SizeField,
    mtime: Number,
    checksum: Checksum,
    type_flag: u8,
    link_name: Vec<u8>,
    owner_names: (Vec<u8>, Vec<u8>),
    device: (Number, Number),
    data: Vec<u8>,
    /// Whether the data is padded to a whole block, as archivers do.
    padded: bool,
}

#[derive(Clone, Debug)]
enum Ending {
    TwoZeroBlocks,
    OneZeroBlock,
    None,
    /// The stream stops this many bytes before its end.
    CutShort(usize),
}

fn component() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => Just(b"..".to_vec()),
        1 => Just(b".".to_vec()),
        1 => Just(Vec::new()),
        12 => prop::sample::select(vec!["a", "b", "dir", "link", "file"])
            .prop_map(|name| format!("{MARKER}{name}").into_bytes()),
        1 => Just(format!(".wh.{MARKER}a").into_bytes()),
        1 => Just(b".wh..wh..opq".to_vec()),
        1 => Just(b".wh..wh.plnk".to_vec()),
        1 => (0usize..8).prop_map(|at| {
            let mut name = format!("{MARKER}nul").into_bytes();
            name.insert(at.min(name.len()), 0);
            name
        }),
        1 => (90usize..300).prop_map(|length| {
            let mut name = MARKER.as_bytes().to_vec();
            name.resize(length, b'n');
            name
        }),
    ]
}

fn path() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        prop::collection::vec(component(), 1..6),
        any::<bool>(),
    )
        .prop_map(|(absolute, components, trailing_slash)| {
            let mut path = if absolute { b"/".to_vec() } else { Vec::new() };
            path.extend(components.join(&b'/'));
            if trailing_slash {
                path.push(b'/');
            }
            path
        })
}

fn link_target() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => path(),
        1 => prop::sample::select(vec!["/", "/tmp", "/etc/passwd", "..", "../../..", CANARY_TARGET])
            .prop_map(|target| target.as_bytes().to_vec()),
    ]
}

/// Generates octal numbers in `plausible`, as archivers write them.
fn octal(plausible: std::ops::Range<u64>) -> impl Strategy<Value = Number> {
    plausible.prop_map(Number::Octal)
}

fn number() -> impl Strategy<Value = Number> {
    prop_oneof![
        6 => prop_oneof![0u64..0o10000, 0u64..70000, any::<u64>()].prop_map(Number::Octal),
        1 => (any::<bool>(), any::<u64>())
            .prop_map(|(negative, value)| Number::Binary { negative, value }),
        1 => prop::collection::vec(
            prop::sample::select(b"0123456789 \0x-+7".to_vec()),
            0..12,
        )
        .prop_map(Number::Garbage),
    ]
}

fn type_flag() -> impl Strategy<Value = u8> {
    prop_oneof![
        8 => prop::sample::select(b"0\x001234567LKxgSVMDN".to_vec()),
        1 => any::<u8>(),
    ]
}

/// Generates the type flags that archivers write, mostly regular files and directories.
fn common_type_flag() -> impl Strategy<Value = u8> {
    prop_oneof![
        6 => Just(b'0'),
        4 => Just(b'5'),
        2 => Just(b'2'),
        1 => Just(b'1'),
        1 => Just(b'x'),
        1 => Just(b'L'),
        1 => prop::sample::select(b"346K".to_vec()),
    ]
}

/// Generates the data for an entry of `type_flag`: PAX records for `x` and `g`, a long name for `L` and
/// `K`, bytes for the rest.
fn data_for(type_flag: u8) -> BoxedStrategy<Vec<u8>> {
    match type_flag {
        b'x' | b'g' => prop::collection::vec(pax_record(), 0..5)
            .prop_map(|records| records.concat())
            .boxed(),
        b'L' | b'K' => (path(), any::<bool>())
            .prop_map(|(mut name, nul)| {
                if nul {
                    name.push(0);
                }
                name
            })
            .boxed(),
        _ => prop::collection::vec(any::<u8>(), 0..1200).boxed(),
    }
}

/// Generates one PAX record, `LENGTH KEY=VALUE\n`, with a correct or an arbitrary length.
fn pax_record() -> impl Strategy<Value = Vec<u8>> {
    let key = prop::sample::select(vec![
        "path",
        "linkpath",
        "size",
        "uid",
        "gid",
        "mtime",
        "uname",
        "SCHILY.xattr.user.mfz",
        "SCHILY.xattr.user.overlay.opaque",
        "SCHILY.xattr.security.capability",
        "SCHILY.xattr.trusted.overlay.whiteout",
        "GNU.sparse.size",
        "GNU.sparse.map",
        "",
    ]);
    let value = prop_oneof![
        link_target(),
        prop_oneof![Just(0u64), 0u64..100_000, any::<u64>()]
            .prop_map(|number| number.to_string().into_bytes()),
        prop::collection::vec(any::<u8>(), 0..20),
    ];
    (key, value, prop::option::weighted(0.2, 0usize..400)).prop_map(
        |(key, value, stated_length)| {
            let body_length = key.len() + value.len() + 3;
            let mut length = body_length + 1;
            while length.to_string().len() + body_length != length {
                length = length.to_string().len() + body_length;
            }
            let stated = stated_length.unwrap_or(length);
            let mut record = format!("{stated} {key}=").into_bytes();
            record.extend(&value);
            record.push(b'\n');
            record
        },
    )
}

/// Generates an entry of any shape. Most layers stop at such an entry, so `raw_entry` mixes
/// in four plausible entries for each of these.
fn wild_entry() -> impl Strategy<Value = RawEntry> {
    type_flag().prop_flat_map(|type_flag| {
        let header = (
            prop_oneof![Just(Format::V7), Just(Format::Ustar), Just(Format::Gnu)],
            path(),
            (number(), number(), number()),
            prop_oneof![6 => Just(SizeField::Exact), 1 => number().prop_map(SizeField::Declared)],
            number(),
            prop_oneof![9 => Just(Checksum::Correct), 1 => any::<u32>().prop_map(Checksum::Wrong)],
            link_target(),
        );
        let rest = (
            (
                prop::collection::vec(any::<u8>(), 0..40),
                prop::collection::vec(any::<u8>(), 0..40),
            ),
            (number(), number()),
            data_for(type_flag),
            prop::bool::weighted(0.9),
        );
        (header, rest).prop_map(
            move |(
                (format, name, (mode, uid, gid), size, mtime, checksum, link_name),
                (owner_names, device, data, padded),
            )| RawEntry {
                format,
                name,
                mode,
                uid,
                gid,
                size,
                mtime,
                checksum,
                type_flag,
                link_name,
                owner_names,
                device,
                data,
                padded,
            },
        )
    })
}

/// Generates an entry as archivers write it, with generated names, link targets and data.
/// It gets past header parsing, so the unpacker also reaches the entries after it.
fn plausible_entry() -> impl Strategy<Value = RawEntry> {
    common_type_flag().prop_flat_map(|type_flag| {
        (
            prop_oneof![Just(Format::Ustar), Just(Format::Gnu), Just(Format::V7)],
            path(),
            (octal(0..0o10000), octal(0..70000), octal(0..70000)),
            link_target(),
            (octal(0..3), octal(0..3)),
            data_for(type_flag),
        )
            .prop_map(
                move |(format, name, (mode, uid, gid), link_name, device, data)| RawEntry {
                    format,
                    name,
                    mode,
                    uid,
                    gid,
                    size: SizeField::Exact,
                    mtime: Number::Octal(1_600_000_000),
                    checksum: Checksum::Correct,
                    type_flag,
                    link_name,
                    owner_names: (Vec::new(), Vec::new()),
                    device,
                    data,
                    padded: true,
                },
            )
    })
}

fn raw_entry() -> impl Strategy<Value = RawEntry> {
    prop_oneof![
        4 => plausible_entry(),
        1 => wild_entry(),
    ]
}

fn ending() -> impl Strategy<Value = Ending> {
    prop_oneof![
        4 => Just(Ending::TwoZeroBlocks),
        1 => Just(Ending::OneZeroBlock),
        1 => Just(Ending::None),
        1 => (1usize..700).prop_map(Ending::CutShort),
    ]
}

/// Writes `value` into `field` in the given encoding, truncating what does not fit.
fn put_number(field: &mut [u8], value: &Number) {
    match value {
        Number::Octal(number) => {
            let text = format!("{number:0width$o}\0", width = field.len() - 1);
            put_bytes(field, text.as_bytes());
        }
        Number::Binary { negative, value } => {
            field.fill(if *negative { 0xff } else { 0 });
            field[0] = if *negative { 0xff } else { 0x80 };
            let bytes = value.to_be_bytes();
            let start = field.len().saturating_sub(bytes.len()).max(1);
            let skip = bytes.len() - (field.len() - start);
            field[start..].copy_from_slice(&bytes[skip..]);
        }
        Number::Garbage(bytes) => put_bytes(field, bytes),
    }
}

fn put_bytes(field: &mut [u8], bytes: &[u8]) {
    let length = bytes.len().min(field.len());
    field[..length].copy_from_slice(&bytes[..length]);
}

/// Encodes one entry: its header block, then its data.
fn encode(entry: &RawEntry, canary: &Path) -> Vec<u8> {
    let mut header = [0u8; BLOCK];
    let name = &entry.name;
    match entry.format {
        // ustar splits a long name at a slash into prefix and name; anything that does not
        // fit is cut off.
        Format::Ustar if name.len() > 100 => {
            let split = name[..name.len().min(156)]
                .iter()
                .rposition(|&byte| byte == b'/')
                .unwrap_or(0);
            put_bytes(&mut header[345..500], &name[..split]);
            put_bytes(&mut header[0..100], &name[(split + 1).min(name.len())..]);
        }
        _ => put_bytes(&mut header[0..100], name),
    }
    put_number(&mut header[100..108], &entry.mode);
    put_number(&mut header[108..116], &entry.uid);
    put_number(&mut header[116..124], &entry.gid);
    let size = match &entry.size {
        SizeField::Exact => Number::Octal(entry.data.len() as u64),
        SizeField::Declared(number) => number.clone(),
    };
    put_number(&mut header[124..136], &size);
    put_number(&mut header[136..148], &entry.mtime);
    header[156] = entry.type_flag;

    let link_name = if entry.link_name == CANARY_TARGET.as_bytes() {
        canary.as_os_str().as_encoded_bytes().to_vec()
    } else {
        entry.link_name.clone()
    };
    put_bytes(&mut header[157..257], &link_name);
    match entry.format {
        Format::V7 => {}
        Format::Ustar => put_bytes(&mut header[257..265], b"ustar\x0000"),
        Format::Gnu => put_bytes(&mut header[257..265], b"ustar  \x00"),
    }
    if !matches!(entry.format, Format::V7) {
        put_bytes(&mut header[265..297], &entry.owner_names.0);
        put_bytes(&mut header[297..329], &entry.owner_names.1);
        put_number(&mut header[329..337], &entry.device.0);
        put_number(&mut header[337..345], &entry.device.1);
    }

    // The checksum is the byte sum of the header with the checksum field read as spaces.
    header[148..156].fill(b' ');
    let sum = match entry.checksum {
        Checksum::Correct => header.iter().map(|&byte| u32::from(byte)).sum::<u32>(),
        Checksum::Wrong(sum) => sum,
    };
    put_bytes(
        &mut header[148..156],
        format!("{:06o}\0 ", sum & 0o777777).as_bytes(),
    );

    let mut bytes = header.to_vec();
    bytes.extend(&entry.data);
    if entry.padded {
        bytes.resize(bytes.len().next_multiple_of(BLOCK), 0);
    }
    bytes
}

fn encode_layer(entries: &[RawEntry], ending: &Ending, canary: &Path) -> Vec<u8> {
    let mut layer: Vec<u8> = entries.iter().flat_map(|e| encode(e, canary)).collect();
    match ending {
        Ending::TwoZeroBlocks => layer.resize(layer.len() + 2 * BLOCK, 0),
        Ending::OneZeroBlock => layer.resize(layer.len() + BLOCK, 0),
        Ending::None => {}
        Ending::CutShort(bytes) => layer.truncate(layer.len().saturating_sub(*bytes)),
    }
    layer
}

/// A scratch root `root/a/b/c/dest` with a canary file `root/canary`.
struct Scratch {
    _dir: tempfile::TempDir,
    root: PathBuf,
    dest: PathBuf,
    canary: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("fuzz-tar-header-")
            .tempdir()
            .unwrap();
        let root = dir.path().to_owned();
        let dest = DEPTH
            .iter()
            .fold(root.clone(), |path, name| path.join(name))
            .join("dest");
        fs::create_dir_all(&dest).unwrap();
        let canary = root.join("canary");
        fs::write(&canary, CANARY_CONTENT).unwrap();
        Self {
            _dir: dir,
            root,
            dest,
            canary,
        }
    }

    /// Asserts that every directory between the root and `dest` contains only the next one
    /// (and the root its canary), that the canary is unchanged and unlinked, and that the
    /// system temporary directory contains no generated name.
    fn assert_nothing_escaped(&self) {
        let mut directory = self.root.clone();
        let mut expected = vec!["a".to_owned(), "canary".to_owned()];
        for next in DEPTH.iter().skip(1).chain(["dest"].iter()) {
            assert_eq!(
                entry_names(&directory),
                expected,
                "entries in {directory:?}"
            );
            directory = directory.join(&expected[0]);
            expected = vec![(*next).to_owned()];
        }
        assert_eq!(
            entry_names(&directory),
            expected,
            "entries in {directory:?}"
        );
        assert!(fs::symlink_metadata(&self.dest).unwrap().is_dir());

        let canary = fs::symlink_metadata(&self.canary).unwrap();
        assert!(canary.is_file(), "canary replaced");
        assert_eq!(canary.nlink(), 1, "canary gained a hard link");
        assert_eq!(fs::read(&self.canary).unwrap(), CANARY_CONTENT);

        let temp = std::env::temp_dir();
        let escaped: Vec<String> = entry_names(&temp)
            .into_iter()
            .filter(|name| name.starts_with(MARKER) || name.starts_with(&format!(".wh.{MARKER}")))
            .collect();
        assert!(
            escaped.is_empty(),
            "generated names in {temp:?}: {escaped:?}"
        );
    }
}

fn entry_names(directory: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(directory)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Asserts the rules the unpacker keeps inside `dest`: no block devices, no character devices
/// but 0:0 whiteouts, no set-user-ID files. Directories get mode 0700 so that the walk, and
/// the scratch removal afterwards, can enter them.
fn check_tree(directory: &Path) {
    fs::set_permissions(directory, fs::Permissions::from_mode(0o700)).unwrap();
    for entry in fs::read_dir(directory).unwrap() {
        let path = entry.unwrap().path();
        let metadata = fs::symlink_metadata(&path).unwrap();
        let file_type = metadata.file_type();
        assert!(!file_type.is_block_device(), "block device at {path:?}");
        if file_type.is_char_device() {
            assert_eq!(
                metadata.rdev(),
                0,
                "device other than a whiteout at {path:?}"
            );
        }
        if file_type.is_dir() {
            check_tree(&path);
        } else {
            assert_eq!(metadata.mode() & 0o4000, 0, "setuid bit at {path:?}");
        }
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn raw_headers_never_escape(
        entries in prop::collection::vec(raw_entry(), 1..8),
        ending in ending(),
    ) {
        let scratch = Scratch::new();
        let layer = encode_layer(&entries, &ending, &scratch.canary);
        let options = UnpackOptions::new(Digest::of_bytes(b"fuzz_tar_header layer"));

        let _ = unpack_layer(layer.as_slice(), Compression::None, &scratch.dest, &options);

        scratch.assert_nothing_escaped();
        check_tree(&scratch.dest);
    }
}

/// The header encoder writes what a real tar parser reads back, so the property test
/// reaches the unpacker's entry handling and not only header validation.
#[test]
fn encoder_writes_readable_headers() {
    let scratch = Scratch::new();
    let entry = RawEntry {
        format: Format::Ustar,
        name: format!("{MARKER}dir/{MARKER}file").into_bytes(),
        mode: Number::Octal(0o644),
        uid: Number::Binary {
            negative: false,
            value: 1000,
        },
        gid: Number::Octal(1000),
        size: SizeField::Exact,
        mtime: Number::Octal(1_600_000_000),
        checksum: Checksum::Correct,
        type_flag: b'0',
        link_name: Vec::new(),
        owner_names: (b"user".to_vec(), b"group".to_vec()),
        device: (Number::Octal(0), Number::Octal(0)),
        data: b"hello".to_vec(),
        padded: true,
    };
    let long = RawEntry {
        format: Format::Ustar,
        name: [
            MARKER.repeat(30).as_bytes(),
            b"/",
            MARKER.as_bytes(),
            b"long",
        ]
        .concat(),
        ..entry.clone()
    };
    let layer = encode_layer(&[entry, long], &Ending::TwoZeroBlocks, &scratch.canary);

    let mut archive = tar::Archive::new(layer.as_slice());
    let names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            assert_eq!(entry.header().uid().unwrap(), 1000);
            entry.path().unwrap().to_string_lossy().into_owned()
        })
        .collect();
    assert_eq!(
        names,
        vec![
            format!("{MARKER}dir/{MARKER}file"),
            format!("{}/{MARKER}long", MARKER.repeat(30)),
        ]
    );

    let options = UnpackOptions::new(Digest::of_bytes(b"fuzz_tar_header layer"));
    let report = unpack_layer(layer.as_slice(), Compression::None, &scratch.dest, &options)
        .expect("a well-formed layer unpacks");
    assert_eq!(report.counts.files, 2);
    assert_eq!(
        fs::read(scratch.dest.join(format!("{MARKER}dir/{MARKER}file"))).unwrap(),
        b"hello"
    );
}
