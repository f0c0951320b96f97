//! Trace records cut straight from the request's protobuf bytes. A record is a whole export
//! request with one resource entry, and protobuf lets it be written from the received bytes of
//! the resource, scopes and spans it keeps: there is no decoding into owned values and no
//! encoding again, which were the largest costs per span (make bench-e2e, perf). Every span
//! is still checked against the OTLP schema as strictly as prost decodes it (`valid_message`), so
//! what is stored is exactly what a consumer's decoder accepts, and the answer to a bad
//! request is the same: INVALID_ARGUMENT / 400.
//!
//! Used for `otlp_proto` records of traces; everything else goes through the decoded path.

use prost::bytes::{Buf, Bytes};
use prost::encoding::{
    DecodeContext, WireType, decode_key, decode_varint, encode_key, encode_varint,
    encoded_len_varint, skip_field,
};
use prost::{DecodeError, Message};

use super::decode::{delimited, for_each_entry};
use super::signals::{id_length_error, resource_key, trace_key};
use super::{Encoded, RecordFormat, compress, fit};
use crate::config::{Compression, PartitionKey};
use crate::kpl::UserRecord;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

/// Field numbers shared by every level of an export request.
const RESOURCES: u32 = 1;
const SCOPES: u32 = 2;
const ITEMS: u32 = 2;

/// A field of a message as received: its number, and its bytes with tag and length.
#[derive(Debug, Clone)]
struct RawField {
    number: u32,
    bytes: Bytes,
}

/// One scope entry: its bytes, its fields other than the spans, and where each span is in
/// those bytes. Spans are places rather than `Bytes` of their own: a `Bytes` per span was an
/// atomic reference count taken and dropped, a few percent of the CPU at full speed (perf).
#[derive(Debug, Clone, Default)]
pub struct RawScope {
    bytes: Bytes,
    head: Vec<RawField>,
    spans: Vec<RawSpan>,
}

/// A span of a scope entry: where its bytes are (no tag, no length), and its ids within them.
#[derive(Debug, Clone, Copy, Default)]
struct RawSpan {
    start: u32,
    end: u32,
    ids: SpanIds,
}

impl RawScope {
    fn span(&self, span: &RawSpan) -> &[u8] {
        &self.bytes[span.start as usize..span.end as usize]
    }
}

/// Where a span's trace id and span id are in its bytes, found while it is checked (offsets:
/// a request is at most 1 GiB).
#[derive(Debug, Clone, Copy, Default)]
struct SpanIds {
    trace_id: (u32, u32),
    span_id: (u32, u32),
}

impl SpanIds {
    /// The ids in `span`, the bytes they were found in.
    fn of<'a>(&self, span: &'a [u8]) -> (&'a [u8], &'a [u8]) {
        let at = |(start, end): (u32, u32)| &span[start as usize..end as usize];
        (at(self.trace_id), at(self.span_id))
    }
}

/// One resource entry: its bytes, its fields other than the scopes, and its scopes.
#[derive(Debug, Clone, Default)]
pub struct RawResource {
    bytes: Bytes,
    head: Vec<RawField>,
    scopes: Vec<RawScope>,
}

impl RawResource {
    /// The resource (field 1), decoded: small, and needed for attribute partition keys.
    pub fn resource(
        &self,
    ) -> Result<Option<opentelemetry_proto::tonic::resource::v1::Resource>, DecodeError> {
        let mut resource = None;
        for field in self.head.iter().filter(|f| f.number == 1) {
            let mut bytes = field.bytes.clone();
            let (_, wire_type) = decode_key(&mut bytes)?;
            prost::encoding::message::merge(
                wire_type,
                resource.get_or_insert_with(Default::default),
                &mut bytes,
                DecodeContext::default(),
            )?;
        }
        Ok(resource)
    }
}

/// Splits a traces request into its resource entries, checking every byte of it: the resource
/// and scope fields by decoding them (they are few), each span against the schema.
pub fn split_traces(bytes: Bytes) -> Result<Vec<RawResource>, DecodeError> {
    let mut resources = Vec::new();
    for_each_entry(bytes, RESOURCES, |entry| {
        resources.push(resource(entry)?);
        Ok(())
    })?;
    Ok(resources)
}

fn resource(bytes: Bytes) -> Result<RawResource, DecodeError> {
    let mut scopes = Vec::new();
    let mut check = opentelemetry_proto::tonic::trace::v1::ResourceSpans::default();
    let head = split_entries(bytes.clone(), SCOPES, &mut check, |entry| {
        scopes.push(scope(entry)?);
        Ok(())
    })?;
    Ok(RawResource {
        bytes,
        head,
        scopes,
    })
}

/// A scope entry, checked: its spans against the schema, its other fields by decoding them
/// (as [`split_entries`] does, over a slice, so a span costs no `Bytes`).
fn scope(bytes: Bytes) -> Result<RawScope, DecodeError> {
    let mut spans = Vec::new();
    let mut head = Vec::new();
    let mut check = opentelemetry_proto::tonic::trace::v1::ScopeSpans::default();
    let mut rest: &[u8] = &bytes;
    while !rest.is_empty() {
        let field_start = bytes.len() - rest.len();
        let (number, wire_type) = decode_key(&mut rest)?;
        if number == ITEMS {
            let span = delimited_slice(wire_type, &mut rest)?;
            let start = (bytes.len() - rest.len() - span.len()) as u32;
            spans.push(RawSpan {
                start,
                end: start + span.len() as u32,
                ids: valid_span(span)?,
            });
        } else {
            check.merge_field(number, wire_type, &mut rest, DecodeContext::default())?;
            head.push(RawField {
                number,
                bytes: bytes.slice(field_start..bytes.len() - rest.len()),
            });
        }
    }
    Ok(RawScope { bytes, head, spans })
}

/// The length-delimited field at the front of `rest`, with prost's errors.
fn delimited_slice<'a>(wire_type: WireType, rest: &mut &'a [u8]) -> Result<&'a [u8], DecodeError> {
    prost::encoding::check_wire_type(WireType::LengthDelimited, wire_type)?;
    let at_length = *rest;
    let len = decode_varint(rest)?;
    if len > rest.len() as u64 {
        // prost's own words for a field longer than what is left.
        let mut at_length = at_length;
        let mut field = Vec::new();
        return Err(prost::encoding::bytes::merge(
            wire_type,
            &mut field,
            &mut at_length,
            DecodeContext::default(),
        )
        .expect_err("a field longer than what is left"));
    }
    let (field, after) = rest.split_at(len as usize);
    *rest = after;
    Ok(field)
}

/// Checks a span against the schema, noting where its ids are on the way (the last
/// occurrence wins, as in prost).
fn valid_span(span: &[u8]) -> Result<SpanIds, DecodeError> {
    let mut ids = SpanIds::default();
    valid_message(span, &SPAN, SPAN_DEPTH, |number, at| {
        let at = (at.start as u32, at.end as u32);
        match number {
            1 => ids.trace_id = at,
            2 => ids.span_id = at,
            _ => {}
        }
    })?;
    Ok(ids)
}

/// Hands each occurrence of the repeated field `entries` to `entry`, and returns every other
/// field as received, after decoding it into `check` (which is how it is checked).
fn split_entries(
    mut bytes: Bytes,
    entries: u32,
    check: &mut impl Message,
    mut entry: impl FnMut(Bytes) -> Result<(), DecodeError>,
) -> Result<Vec<RawField>, DecodeError> {
    let mut head = Vec::new();
    while !bytes.is_empty() {
        let start = bytes.clone();
        let (number, wire_type) = decode_key(&mut bytes)?;
        if number == entries {
            entry(delimited(wire_type, &mut bytes)?)?;
        } else {
            check.merge_field(number, wire_type, &mut bytes, DecodeContext::default())?;
            head.push(RawField {
                number,
                bytes: start.slice(..start.len() - bytes.len()),
            });
        }
    }
    Ok(head)
}

// ---------------------------------------------------------------- the span's schema

/// What a field holds, as far as its bytes can be wrong.
#[derive(Debug)]
enum Kind {
    Varint,
    Fixed32,
    Fixed64,
    Bytes,
    /// Bytes that must be UTF-8.
    Text,
    Message(&'static Schema),
}

/// A message's fields by number. Statics refer to each other by address, so that AnyValue
/// can hold an ArrayValue that holds AnyValues. A field numbered n is best listed at n - 1:
/// it is found there without a search (most fields of a span are).
#[derive(Debug)]
struct Schema(&'static [(u32, Kind)]);

impl Schema {
    fn kind(&self, number: u32) -> Option<&Kind> {
        match self.0.get((number as usize).wrapping_sub(1)) {
            Some((listed, kind)) if *listed == number => Some(kind),
            _ => self
                .0
                .iter()
                .find(|(n, _)| *n == number)
                .map(|(_, kind)| kind),
        }
    }
}

/// opentelemetry.proto.trace.v1.Span and what it holds (opentelemetry-proto 0.33).
static SPAN: Schema = Schema(&[
    (1, Kind::Bytes),  // trace_id
    (2, Kind::Bytes),  // span_id
    (3, Kind::Text),   // trace_state
    (4, Kind::Bytes),  // parent_span_id
    (5, Kind::Text),   // name
    (6, Kind::Varint), // kind
    (7, Kind::Fixed64),
    (8, Kind::Fixed64),
    (9, Kind::Message(&KEY_VALUE)),
    (10, Kind::Varint),
    (11, Kind::Message(&EVENT)),
    (12, Kind::Varint),
    (13, Kind::Message(&LINK)),
    (14, Kind::Varint),
    (15, Kind::Message(&STATUS)),
    (16, Kind::Fixed32), // flags
]);
static EVENT: Schema = Schema(&[
    (1, Kind::Fixed64),
    (2, Kind::Text),
    (3, Kind::Message(&KEY_VALUE)),
    (4, Kind::Varint),
]);
static LINK: Schema = Schema(&[
    (1, Kind::Bytes),
    (2, Kind::Bytes),
    (3, Kind::Text),
    (4, Kind::Message(&KEY_VALUE)),
    (5, Kind::Varint),
    (6, Kind::Fixed32),
]);
static STATUS: Schema = Schema(&[(2, Kind::Text), (3, Kind::Varint)]);
static KEY_VALUE: Schema = Schema(&[
    (1, Kind::Text),
    (2, Kind::Message(&ANY_VALUE)),
    (3, Kind::Varint),
]);
static ANY_VALUE: Schema = Schema(&[
    (1, Kind::Text),
    (2, Kind::Varint),
    (3, Kind::Varint),
    (4, Kind::Fixed64),
    (5, Kind::Message(&ARRAY_VALUE)),
    (6, Kind::Message(&KEY_VALUE_LIST)),
    (7, Kind::Bytes),
    (8, Kind::Varint),
]);
static ARRAY_VALUE: Schema = Schema(&[(1, Kind::Message(&ANY_VALUE))]);
static KEY_VALUE_LIST: Schema = Schema(&[(1, Kind::Message(&KEY_VALUE))]);

/// prost's recursion budget left when a span is decoded inside a whole request (request,
/// resource entry and scope entry above it).
const SPAN_DEPTH: u32 = 100 - 3;

/// Checks `bytes` as prost would decode them into the message `schema` describes: wire types
/// of known fields, UTF-8 of strings, lengths, varints, unknown fields skipped. `seen` is told
/// the number and place in `bytes` of each known length-delimited field of this message.
fn valid_message(
    bytes: &[u8],
    schema: &Schema,
    depth: u32,
    mut seen: impl FnMut(u32, std::ops::Range<usize>),
) -> Result<(), DecodeError> {
    let mut buf = bytes;
    while buf.has_remaining() {
        let (number, wire_type) = decode_key(&mut buf)?;
        let Some(kind) = schema.kind(number) else {
            skip_field(wire_type, number, &mut buf, DecodeContext::default())?;
            continue;
        };
        let expected = match kind {
            Kind::Varint => WireType::Varint,
            Kind::Fixed32 => WireType::ThirtyTwoBit,
            Kind::Fixed64 => WireType::SixtyFourBit,
            Kind::Bytes | Kind::Text | Kind::Message(_) => WireType::LengthDelimited,
        };
        prost::encoding::check_wire_type(expected, wire_type)?;
        match kind {
            Kind::Varint => {
                decode_varint(&mut buf)?;
            }
            Kind::Fixed32 | Kind::Fixed64 => {
                let width = if wire_type == WireType::ThirtyTwoBit {
                    4
                } else {
                    8
                };
                match buf.get(width..) {
                    Some(rest) => buf = rest,
                    // Cut short: prost's own error.
                    None => skip_field(wire_type, number, &mut buf, DecodeContext::default())?,
                }
            }
            Kind::Bytes | Kind::Text | Kind::Message(_) => {
                let at_length = buf;
                let len = decode_varint(&mut buf)?;
                if len > buf.remaining() as u64 {
                    // Let prost itself say what is wrong with a field longer than its message.
                    let mut field = Vec::new();
                    let mut at_length = at_length;
                    let ctx = DecodeContext::default();
                    return Err(prost::encoding::bytes::merge(
                        wire_type,
                        &mut field,
                        &mut at_length,
                        ctx,
                    )
                    .expect_err("a field longer than what is left"));
                }
                let start = bytes.len() - buf.len();
                let (field, rest) = buf.split_at(len as usize);
                buf = rest;
                seen(number, start..start + field.len());
                match kind {
                    // Most text is ASCII, checked faster than UTF-8 is.
                    Kind::Text if !field.is_ascii() => {
                        std::str::from_utf8(field).map_err(|_| invalid_utf8())?;
                    }
                    Kind::Message(inner) => {
                        if depth == 0 {
                            return Err(recursion_limit());
                        }
                        // Most attributes are plain, and checked faster on their own.
                        let plain =
                            depth > 1 && std::ptr::eq(*inner, &KEY_VALUE) && plain_key_value(field);
                        if !plain {
                            valid_message(field, inner, depth - 1, ignore)?;
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

fn ignore(_: u32, _: std::ops::Range<usize>) {}

/// Whether `field` is a KeyValue of the plainest shape, which prost accepts: an ASCII key, then
/// a value holding only an ASCII string, an int, a bool or a double, every length one byte.
/// Anything else (false) is left to `valid_message`, so this never refuses what prost takes
/// and never takes what it refuses.
fn plain_key_value(field: &[u8]) -> bool {
    let short = |len: u8, bytes: &[u8]| len < 0x80 && bytes.len() >= len as usize;
    let [0x0a, key_len, rest @ ..] = field else {
        return false;
    };
    if !short(*key_len, rest) || !rest[..*key_len as usize].is_ascii() {
        return false;
    }
    let [0x12, value_len, value @ ..] = &rest[*key_len as usize..] else {
        return false;
    };
    if *value_len as usize != value.len() || !short(*value_len, value) {
        return false;
    }
    match value {
        // string_value
        [0x0a, len, text @ ..] => {
            *len as usize == text.len() && short(*len, text) && text.is_ascii()
        }
        // bool_value, int_value: one varint filling the rest (up to 9 bytes: a tenth byte has
        // rules of its own, left to prost)
        [0x10 | 0x18, varint @ ..] => match varint.split_last() {
            Some((last, more)) => {
                varint.len() <= 9 && last & 0x80 == 0 && more.iter().all(|b| b & 0x80 != 0)
            }
            None => false,
        },
        // double_value
        [0x21, bits @ ..] => bits.len() == 8,
        _ => false,
    }
}

/// The error prost gives for a string that is not UTF-8 (made by prost itself).
fn invalid_utf8() -> DecodeError {
    let mut text = String::new();
    let mut bytes: &[u8] = &[1, 0xff];
    prost::encoding::string::merge(
        WireType::LengthDelimited,
        &mut text,
        &mut bytes,
        DecodeContext::default(),
    )
    .expect_err("0xff is not UTF-8")
}

/// The error prost gives when messages nest too deep (made by prost itself).
fn recursion_limit() -> DecodeError {
    let mut deep = Vec::new();
    for _ in 0..=100 {
        // AnyValue { array_value: ArrayValue { values: [ ... ] } }, inside out.
        let mut outer = Vec::new();
        encode_key(5, WireType::LengthDelimited, &mut outer);
        let mut array = Vec::new();
        encode_key(1, WireType::LengthDelimited, &mut array);
        encode_varint(deep.len() as u64, &mut array);
        array.extend_from_slice(&deep);
        encode_varint(array.len() as u64, &mut outer);
        outer.extend_from_slice(&array);
        deep = outer;
    }
    opentelemetry_proto::tonic::common::v1::AnyValue::decode(deep.as_slice())
        .expect_err("nested past prost's limit")
}

// ---------------------------------------------------------------- writing records

/// A group of spans of one resource entry, by (scope index, span index).
pub type Selection<'a> = &'a [(u32, u32)];

fn delimited_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// The export request holding `resource` with only the `selected` spans (sorted by scope),
/// written from the received bytes; scopes with no selected span are left out.
pub fn request_of(resource: &RawResource, selected: Selection<'_>) -> Vec<u8> {
    let head_len = |head: &[RawField]| head.iter().map(|f| f.bytes.len()).sum::<usize>();
    let scope_len = |scope: &RawScope, spans: &[(u32, u32)]| -> usize {
        head_len(&scope.head)
            + spans
                .iter()
                .map(|&(_, i)| {
                    let span = &scope.spans[i as usize];
                    delimited_len((span.end - span.start) as usize)
                })
                .sum::<usize>()
    };
    let runs = || selected.chunk_by(|a, b| a.0 == b.0);
    let resource_len = head_len(&resource.head)
        + runs()
            .map(|run| delimited_len(scope_len(&resource.scopes[run[0].0 as usize], run)))
            .sum::<usize>();
    let mut out = Vec::with_capacity(delimited_len(resource_len));
    encode_key(RESOURCES, WireType::LengthDelimited, &mut out);
    encode_varint(resource_len as u64, &mut out);
    // Fields in field-number order, as protobuf encoders write them (the order does not
    // change the meaning; it makes a canonical request give canonical records).
    write_head(&mut out, &resource.head, |n| n < SCOPES);
    for run in runs() {
        let scope = &resource.scopes[run[0].0 as usize];
        encode_key(SCOPES, WireType::LengthDelimited, &mut out);
        encode_varint(scope_len(scope, run) as u64, &mut out);
        write_head(&mut out, &scope.head, |n| n < ITEMS);
        for &(_, i) in run {
            let span = scope.span(&scope.spans[i as usize]);
            encode_key(ITEMS, WireType::LengthDelimited, &mut out);
            encode_varint(span.len() as u64, &mut out);
            out.extend_from_slice(span);
        }
        write_head(&mut out, &scope.head, |n| n > ITEMS);
    }
    write_head(&mut out, &resource.head, |n| n > SCOPES);
    out
}

/// Appends the fields of `head` whose number `keep` selects, as received.
fn write_head(out: &mut Vec<u8>, head: &[RawField], keep: impl Fn(u32) -> bool) {
    for field in head.iter().filter(|f| keep(f.number)) {
        out.extend_from_slice(&field.bytes);
    }
}

// ---------------------------------------------------------------- records

/// Traces to user records from the request's bytes: the records `encoding::traces` makes from
/// the decoded request, for `otlp_proto` records. In trace-id mode each record holds the spans
/// of one trace; otherwise one record per resource entry.
pub fn traces(resources: &[RawResource], format: &RecordFormat) -> Encoded {
    let mut out = Encoded::default();
    for resource in resources {
        // (trace id, scope, span) of every span that can be stored.
        let mut order: Vec<([u8; 16], u32, u32)> = Vec::new();
        let mut refused = false;
        for (s, scope) in resource.scopes.iter().enumerate() {
            order.reserve(scope.spans.len());
            for (i, span) in scope.spans.iter().enumerate() {
                out.items += 1;
                let (trace_id, span_id) = span.ids.of(scope.span(span));
                let invalid = id_length_error("span", "trace_id", trace_id, 16, false)
                    .or_else(|| id_length_error("span", "span_id", span_id, 8, false));
                match invalid {
                    Some(reason) => {
                        out.rejected += 1;
                        out.rejection = Some(reason);
                        refused = true;
                    }
                    None => order.push((
                        trace_id.try_into().expect("checked: 16 bytes"),
                        s as u32,
                        i as u32,
                    )),
                }
            }
        }
        if format.partition_key == PartitionKey::TraceId {
            order.sort_unstable();
            let mut selection = Vec::new();
            for run in order.chunk_by(|a, b| a.0 == b.0) {
                selection.clear();
                selection.extend(run.iter().map(|&(_, s, i)| (s, i)));
                put(resource, &selection, trace_key(&run[0].0), format, &mut out);
            }
        } else {
            // The resource is decoded only when its attributes make the key.
            let attributes = match format.partition_key {
                PartitionKey::Attribute(_) => resource.resource().ok().flatten(),
                _ => None,
            };
            let key = resource_key(attributes.as_ref(), &format.partition_key);
            if refused {
                let selection: Vec<_> = order.iter().map(|&(_, s, i)| (s, i)).collect();
                put(resource, &selection, key, format, &mut out);
            } else {
                // Nothing refused: the record is the resource entry exactly as received.
                let mut request = Vec::with_capacity(delimited_len(resource.bytes.len()));
                encode_key(RESOURCES, WireType::LengthDelimited, &mut request);
                encode_varint(resource.bytes.len() as u64, &mut request);
                request.extend_from_slice(&resource.bytes);
                let items = order.len() as u64;
                push_or_split(request, items, key, format, &mut out);
            }
        }
    }
    out
}

fn put(
    resource: &RawResource,
    selection: Selection<'_>,
    key: String,
    format: &RecordFormat,
    out: &mut Encoded,
) {
    let request = request_of(resource, selection);
    push_or_split(request, selection.len() as u64, key, format, out);
}

/// The one resource entry of a request written here, decoded.
fn request_of_split(request: Vec<u8>) -> opentelemetry_proto::tonic::trace::v1::ResourceSpans {
    ExportTraceServiceRequest::decode(request.as_slice())
        .expect("written from checked bytes")
        .resource_spans
        .pop()
        .expect("one resource entry")
}

/// One record of `request`, or, when it is too large for one, the decoded path's split.
fn push_or_split(
    request: Vec<u8>,
    items: u64,
    key: String,
    format: &RecordFormat,
    out: &mut Encoded,
) {
    let room = format.max_record_bytes.saturating_sub(key.len());
    let data = match format.compression {
        Compression::None if request.len() <= room => Ok(request),
        Compression::None => Err(request),
        compression => {
            let data = compress(request.clone(), compression);
            if data.len() <= room {
                Ok(data)
            } else {
                Err(request)
            }
        }
    };
    match data {
        Ok(data) => {
            out.records.push(UserRecord::new(key, data));
            out.record_items.push(items);
        }
        // Rare: a resource or trace over one record's size, cut as the decoded path does.
        Err(request) => fit(request_of_split(request), key, format, out),
    }
}

#[cfg(test)]
#[path = "raw_tests.rs"]
mod tests;
