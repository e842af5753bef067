//! LVM2 without `lvm`: the physical-volume label, the metadata area, the volume group's
//! text metadata, and the device-mapper tables of its logical volumes.
//!
//! On-disk format (lvm2 `lib/label/label.h`, `lib/format_text/layout.h`): one of the first
//! four sectors starts with `LABELONE` (the label header: its own sector number, a CRC
//! of the rest of the sector, the offset of the PV header, `LVM2 001`); the PV header
//! holds the PV's UUID, its size and two zero-terminated lists of (offset, size): the data
//! areas, then the metadata areas. A metadata area starts with a 512-byte `mda_header`
//! (CRC, magic ` LVM2 x[5A%r0N*>`, version 1, its own start and size, then raw
//! locations); the first raw location points at the current metadata text inside the
//! area's circular buffer. The text is LVM's config syntax (`name { key = value … }`).
//! Every CRC is lvm2's `calc_crc`: the reflected CRC-32 table, initial value
//! `0xf597a6cf`, no final inversion.

use std::io::{Read, Seek, SeekFrom};

use stagehand_common::crc32::reflected_table;

use super::dm::Target;
use crate::probe::util::{le32, le64};

const CRC_TABLE: [u32; 256] = reflected_table(0xEDB8_8320);
const INITIAL_CRC: u32 = 0xf597_a6cf;
const MDA_MAGIC: &[u8; 16] = b" LVM2 x[5A%r0N*>";
const MDA_HEADER_SIZE: u64 = 512;
/// Metadata text larger than this is refused (lvm2's default metadata area is 1 MiB).
const MAX_METADATA: u64 = 16 << 20;

/// lvm2's `calc_crc`.
pub fn crc(bytes: &[u8]) -> u32 {
    bytes.iter().fold(INITIAL_CRC, |c, &b| {
        CRC_TABLE
            .get(usize::from(c as u8 ^ b))
            .copied()
            .unwrap_or(0)
            ^ (c >> 8)
    })
}

fn read_at<R: Read + Seek>(dev: &mut R, off: u64, len: usize) -> Result<Vec<u8>, String> {
    dev.seek(SeekFrom::Start(off))
        .and_then(|_| {
            let mut b = vec![0u8; len];
            dev.read_exact(&mut b).map(|()| b)
        })
        .map_err(|e| format!("cannot read {len} bytes at {off}: {e}"))
}

/// An LVM UUID as lvm2 prints it: 32 characters grouped 6-4-4-4-4-4-6.
pub fn format_uuid(raw: &str) -> String {
    let mut out = String::with_capacity(38);
    for (i, c) in raw.chars().enumerate() {
        if [6, 10, 14, 18, 22, 26].contains(&i) {
            out.push('-');
        }
        out.push(c);
    }
    out
}

/// A physical volume found on a device: its UUID (dashed) and its newest metadata text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvFound {
    pub uuid: String,
    pub metadata: Option<String>,
}

/// Look for an LVM2 label in the first four sectors of `dev`. `Ok(None)`: not a PV.
pub fn read_pv<R: Read + Seek>(dev: &mut R) -> Result<Option<PvFound>, String> {
    let head = match read_at(dev, 0, 2048) {
        Ok(h) => h,
        Err(_) => return Ok(None),
    };
    let mut label = None;
    for sector in 0..4usize {
        let s = head.get(sector * 512..(sector + 1) * 512).unwrap_or(&[]);
        if s.get(..8) == Some(b"LABELONE") {
            label = Some((sector, s));
            break;
        }
    }
    let Some((sector, s)) = label else {
        return Ok(None);
    };
    if le64(s, 8) != sector as u64 {
        return Err(format!(
            "LVM label in sector {sector} names sector {}",
            le64(s, 8)
        ));
    }
    if crc(s.get(20..).unwrap_or(&[])) != le32(s, 16) {
        return Err("LVM label checksum mismatch".into());
    }
    if s.get(24..32) != Some(b"LVM2 001") {
        return Err(format!(
            "LVM label of type {:?} (only LVM2 001 is known)",
            String::from_utf8_lossy(s.get(24..32).unwrap_or(&[]))
        ));
    }
    let pvh = le32(s, 20) as usize;
    let uuid_raw = s
        .get(pvh..pvh + 32)
        .ok_or("LVM PV header outside its sector")?;
    let uuid = format_uuid(&String::from_utf8_lossy(uuid_raw));
    // Data areas, a zero entry, metadata areas, a zero entry.
    let mut off = pvh + 40;
    let mut lists: [Vec<(u64, u64)>; 2] = [Vec::new(), Vec::new()];
    for list in &mut lists {
        loop {
            if off + 16 > s.len() {
                return Err("LVM PV header's area lists run past its sector".into());
            }
            let (o, z) = (le64(s, off), le64(s, off + 8));
            off += 16;
            if o == 0 {
                break;
            }
            list.push((o, z));
        }
    }
    let mut best: Option<(u64, String)> = None;
    let mut errors = Vec::new();
    for &(mda_off, mda_size) in &lists[1] {
        match read_mda(dev, mda_off, mda_size) {
            Ok(Some(text)) => {
                let seqno = seqno_of(&text);
                if best.as_ref().is_none_or(|(s, _)| seqno > *s) {
                    best = Some((seqno, text));
                }
            }
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    if best.is_none() {
        if let Some(e) = errors.into_iter().next() {
            return Err(format!("PV {uuid}: {e}"));
        }
    }
    Ok(Some(PvFound {
        uuid,
        metadata: best.map(|(_, t)| t),
    }))
}

/// The current metadata text of one metadata area (`None`: the area holds none yet).
fn read_mda<R: Read + Seek>(dev: &mut R, start: u64, size: u64) -> Result<Option<String>, String> {
    let h = read_at(dev, start, MDA_HEADER_SIZE as usize)?;
    if crc(h.get(4..).unwrap_or(&[])) != le32(&h, 0) {
        return Err(format!(
            "metadata area header at {start}: checksum mismatch"
        ));
    }
    if h.get(4..20) != Some(MDA_MAGIC) || le32(&h, 20) != 1 {
        return Err(format!(
            "metadata area header at {start}: bad magic or version"
        ));
    }
    if le64(&h, 24) != start {
        return Err(format!(
            "metadata area header at {start} says it is at {}",
            le64(&h, 24)
        ));
    }
    let area = le64(&h, 32).min(size);
    let (off, len, sum, flags) = (le64(&h, 40), le64(&h, 48), le32(&h, 56), le32(&h, 60));
    if off == 0 || len == 0 || flags & 1 != 0 {
        return Ok(None);
    }
    if len > MAX_METADATA || off >= area || off < MDA_HEADER_SIZE || area <= MDA_HEADER_SIZE {
        return Err(format!(
            "metadata at {off}+{len} does not fit its area of {area} bytes"
        ));
    }
    // The text may wrap around the circular buffer, back to just after the header.
    let first = len.min(area - off);
    let mut text = read_at(dev, start + off, first as usize)?;
    if first < len {
        let rest = len - first;
        if rest > area - MDA_HEADER_SIZE {
            return Err("metadata larger than its area".into());
        }
        text.extend(read_at(dev, start + MDA_HEADER_SIZE, rest as usize)?);
    }
    if crc(&text) != sum {
        return Err(format!("metadata text at {start}+{off}: checksum mismatch"));
    }
    let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
    text.truncate(end);
    String::from_utf8(text)
        .map(Some)
        .map_err(|_| "metadata text is not UTF-8".into())
}

fn seqno_of(text: &str) -> u64 {
    parse_config(text)
        .ok()
        .and_then(|c| {
            c.iter().find_map(|(_, v)| match v {
                Cfg::Section(s) => get(s, "seqno").and_then(Cfg::as_u64),
                _ => None,
            })
        })
        .unwrap_or(0)
}

/// A value of LVM's config syntax.
#[derive(Debug, Clone, PartialEq)]
pub enum Cfg {
    Int(i64),
    Str(String),
    Array(Vec<Cfg>),
    Section(Vec<(String, Cfg)>),
}

impl Cfg {
    fn as_u64(&self) -> Option<u64> {
        match self {
            Self::Int(i) => u64::try_from(*i).ok(),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    fn section(&self) -> Option<&[(String, Cfg)]> {
        match self {
            Self::Section(s) => Some(s),
            _ => None,
        }
    }
}

fn get<'a>(s: &'a [(String, Cfg)], key: &str) -> Option<&'a Cfg> {
    s.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

const MAX_NESTING: usize = 16;

/// Parse LVM's config text (`key = value`, `name { … }`, `#` comments, strings, integers,
/// floats read as their integer part, arrays).
pub fn parse_config(text: &str) -> Result<Vec<(String, Cfg)>, String> {
    let mut p = CfgParser {
        s: text.as_bytes(),
        i: 0,
    };
    let items = p.items(0)?;
    p.ws();
    if p.i < p.s.len() {
        return Err(p.err("unexpected '}'"));
    }
    Ok(items)
}

struct CfgParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl CfgParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn err(&self, what: &str) -> String {
        let line = self
            .s
            .get(..self.i)
            .unwrap_or(&[])
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        format!("LVM metadata line {line}: {what}")
    }

    fn ws(&mut self) {
        loop {
            match self.peek() {
                Some(b' ' | b'\t' | b'\n' | b'\r') => self.i += 1,
                Some(b'#') => {
                    while !matches!(self.peek(), None | Some(b'\n')) {
                        self.i += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn ident(&mut self) -> Result<String, String> {
        let start = self.i;
        while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || b"_-+.".contains(&c)) {
            self.i += 1;
        }
        if self.i == start {
            return Err(self.err("expected a name"));
        }
        Ok(String::from_utf8_lossy(self.s.get(start..self.i).unwrap_or(&[])).into_owned())
    }

    fn items(&mut self, depth: usize) -> Result<Vec<(String, Cfg)>, String> {
        if depth > MAX_NESTING {
            return Err(self.err("sections nested too deeply"));
        }
        let mut items = Vec::new();
        loop {
            self.ws();
            match self.peek() {
                None | Some(b'}') => return Ok(items),
                _ => {}
            }
            let key = self.ident()?;
            self.ws();
            match self.peek() {
                Some(b'{') => {
                    self.i += 1;
                    let inner = self.items(depth + 1)?;
                    self.ws();
                    if self.peek() != Some(b'}') {
                        return Err(self.err(&format!("section {key} is not closed")));
                    }
                    self.i += 1;
                    items.push((key, Cfg::Section(inner)));
                }
                Some(b'=') => {
                    self.i += 1;
                    self.ws();
                    let v = self.value(true)?;
                    items.push((key, v));
                }
                _ => return Err(self.err(&format!("expected '=' or '{{' after {key}"))),
            }
        }
    }

    fn value(&mut self, array_ok: bool) -> Result<Cfg, String> {
        match self.peek() {
            Some(b'"') => {
                self.i += 1;
                let mut out = Vec::new();
                loop {
                    match self.peek() {
                        None => return Err(self.err("unterminated string")),
                        Some(b'"') => {
                            self.i += 1;
                            break;
                        }
                        Some(b'\\') => {
                            self.i += 1;
                            if let Some(c) = self.peek() {
                                out.push(c);
                                self.i += 1;
                            }
                        }
                        Some(c) => {
                            out.push(c);
                            self.i += 1;
                        }
                    }
                }
                String::from_utf8(out)
                    .map(Cfg::Str)
                    .map_err(|_| self.err("a string that is not UTF-8"))
            }
            Some(b'[') if array_ok => {
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    self.ws();
                    if self.peek() == Some(b']') {
                        self.i += 1;
                        return Ok(Cfg::Array(items));
                    }
                    items.push(self.value(false)?);
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {}
                        _ => return Err(self.err("expected ',' or ']'")),
                    }
                }
            }
            Some(b'-' | b'0'..=b'9') => {
                let start = self.i;
                self.i += 1;
                while matches!(self.peek(), Some(b'0'..=b'9')) {
                    self.i += 1;
                }
                let text =
                    String::from_utf8_lossy(self.s.get(start..self.i).unwrap_or(&[])).into_owned();
                // A float keeps only its integer part: no field we read is fractional.
                if self.peek() == Some(b'.') {
                    self.i += 1;
                    while matches!(self.peek(), Some(b'0'..=b'9')) {
                        self.i += 1;
                    }
                }
                text.parse()
                    .map(Cfg::Int)
                    .map_err(|_| self.err(&format!("number {text} out of range")))
            }
            _ => Err(self.err("expected a value")),
        }
    }
}

/// A volume group as its metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeGroup {
    pub name: String,
    pub id: String,
    pub seqno: u64,
    /// Extent size in 512-byte sectors.
    pub extent_size: u64,
    pub pvs: Vec<PhysicalVolume>,
    pub lvs: Vec<LogicalVolume>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhysicalVolume {
    /// The metadata's key for it (`pv0`), which segments refer to.
    pub key: String,
    pub id: String,
    /// Where its first extent starts, in sectors.
    pub pe_start: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalVolume {
    pub name: String,
    pub id: String,
    pub visible: bool,
    pub segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub start_extent: u64,
    pub extent_count: u64,
    /// `striped` (linear is one stripe), or the type we do not activate.
    pub kind: String,
    /// Stripe size in sectors (several stripes only).
    pub stripe_size: u64,
    /// (PV key, first extent on that PV).
    pub stripes: Vec<(String, u64)>,
}

fn need<'a>(s: &'a [(String, Cfg)], key: &str, what: &str) -> Result<&'a Cfg, String> {
    get(s, key).ok_or_else(|| format!("LVM metadata: {what} has no {key}"))
}

fn need_u64(s: &[(String, Cfg)], key: &str, what: &str) -> Result<u64, String> {
    need(s, key, what)?
        .as_u64()
        .ok_or_else(|| format!("LVM metadata: {what}'s {key} is not a number"))
}

fn need_str<'a>(s: &'a [(String, Cfg)], key: &str, what: &str) -> Result<&'a str, String> {
    need(s, key, what)?
        .as_str()
        .ok_or_else(|| format!("LVM metadata: {what}'s {key} is not a string"))
}

/// The volume group described by a metadata text.
pub fn parse_vg(text: &str) -> Result<VolumeGroup, String> {
    let top = parse_config(text)?;
    let (name, vg) = top
        .iter()
        .find_map(|(k, v)| v.section().map(|s| (k, s)))
        .ok_or("LVM metadata without a volume group section")?;
    let what = format!("volume group {name}");
    let extent_size = need_u64(vg, "extent_size", &what)?;
    if extent_size == 0 {
        return Err(format!("LVM metadata: {what} has extent size 0"));
    }
    let mut pvs = Vec::new();
    for (key, pv) in need(vg, "physical_volumes", &what)?
        .section()
        .unwrap_or(&[])
    {
        let Some(pv) = pv.section() else { continue };
        let w = format!("{what}, PV {key}");
        pvs.push(PhysicalVolume {
            key: key.clone(),
            id: need_str(pv, "id", &w)?.to_owned(),
            pe_start: need_u64(pv, "pe_start", &w)?,
        });
    }
    let mut lvs = Vec::new();
    let no_lvs = Cfg::Section(Vec::new());
    for (lv_name, lv) in get(vg, "logical_volumes")
        .unwrap_or(&no_lvs)
        .section()
        .unwrap_or(&[])
    {
        let Some(lv) = lv.section() else { continue };
        let w = format!("{what}, LV {lv_name}");
        let status: Vec<&str> = match get(lv, "status") {
            Some(Cfg::Array(a)) => a.iter().filter_map(Cfg::as_str).collect(),
            _ => Vec::new(),
        };
        let count = need_u64(lv, "segment_count", &w)?;
        let mut segments = Vec::new();
        for n in 1..=count.min(1 << 16) {
            let sw = format!("{w}, segment{n}");
            let seg = need(lv, &format!("segment{n}"), &w)?
                .section()
                .ok_or_else(|| format!("LVM metadata: {sw} is not a section"))?;
            let kind = need_str(seg, "type", &sw)?.to_owned();
            let mut stripes = Vec::new();
            if kind == "striped" {
                let Some(Cfg::Array(list)) = get(seg, "stripes") else {
                    return Err(format!("LVM metadata: {sw} has no stripes"));
                };
                for pair in list.chunks(2) {
                    match pair {
                        [Cfg::Str(pv), Cfg::Int(start)] if *start >= 0 => {
                            stripes.push((pv.clone(), *start as u64))
                        }
                        _ => {
                            return Err(format!("LVM metadata: {sw} has a malformed stripes list"))
                        }
                    }
                }
                if stripes.is_empty() {
                    return Err(format!("LVM metadata: {sw} has no stripes"));
                }
            }
            segments.push(Segment {
                start_extent: need_u64(seg, "start_extent", &sw)?,
                extent_count: need_u64(seg, "extent_count", &sw)?,
                stripe_size: get(seg, "stripe_size").and_then(Cfg::as_u64).unwrap_or(0),
                kind,
                stripes,
            });
        }
        lvs.push(LogicalVolume {
            name: lv_name.clone(),
            id: need_str(lv, "id", &w)?.to_owned(),
            visible: status.contains(&"VISIBLE"),
            segments,
        });
    }
    Ok(VolumeGroup {
        name: name.clone(),
        id: need_str(vg, "id", &what)?.to_owned(),
        seqno: need_u64(vg, "seqno", &what)?,
        extent_size,
        pvs,
        lvs,
    })
}

/// The device-mapper name of VG/LV: each `-` doubled, joined by one `-` (lvm2's
/// `dm_build_dm_name`), so `/dev/mapper/vg-root` for VG `vg`, LV `root`.
pub fn dm_name(vg: &str, lv: &str) -> String {
    format!("{}-{}", vg.replace('-', "--"), lv.replace('-', "--"))
}

/// The device-mapper UUID lvm2 gives an LV: `LVM-` + VG id + LV id, without dashes.
pub fn dm_uuid(vg: &VolumeGroup, lv: &LogicalVolume) -> String {
    format!("LVM-{}{}", vg.id.replace('-', ""), lv.id.replace('-', ""))
}

/// The table of `lv`. `device` gives the `major:minor` of a PV by its metadata key.
pub fn table(
    vg: &VolumeGroup,
    lv: &LogicalVolume,
    device: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Target>, String> {
    let es = vg.extent_size;
    let mut targets = Vec::new();
    for seg in &lv.segments {
        if seg.kind != "striped" {
            return Err(format!(
                "logical volume {}/{} has a {} segment, which stage 1 does not activate (linear \
                 and striped are supported); keep the root on a linear or striped LV",
                vg.name, lv.name, seg.kind
            ));
        }
        let start = seg.start_extent.checked_mul(es);
        let length = seg.extent_count.checked_mul(es);
        let (Some(start), Some(length)) = (start, length) else {
            return Err(format!(
                "logical volume {}/{} is too large",
                vg.name, lv.name
            ));
        };
        let mut places = Vec::new();
        for (pv_key, first) in &seg.stripes {
            let pv = vg.pvs.iter().find(|p| &p.key == pv_key).ok_or_else(|| {
                format!(
                    "LVM metadata: {}/{} names unknown PV {pv_key}",
                    vg.name, lv.name
                )
            })?;
            let dev = device(pv_key).ok_or_else(|| {
                format!(
                    "physical volume {} of volume group {} is missing",
                    pv.id, vg.name
                )
            })?;
            let off = first
                .checked_mul(es)
                .and_then(|o| o.checked_add(pv.pe_start))
                .ok_or_else(|| format!("logical volume {}/{} is too large", vg.name, lv.name))?;
            places.push(format!("{dev} {off}"));
        }
        let (kind, params) = if places.len() == 1 {
            ("linear", places.concat())
        } else {
            if seg.stripe_size == 0 {
                return Err(format!(
                    "LVM metadata: {}/{} has stripe size 0",
                    vg.name, lv.name
                ));
            }
            (
                "striped",
                format!("{} {} {}", places.len(), seg.stripe_size, places.join(" ")),
            )
        };
        targets.push(Target {
            start,
            length,
            kind,
            params,
        });
    }
    Ok(targets)
}
