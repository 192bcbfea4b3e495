//! Writes a record no Kafka client would write: a produce request encoded by
//! hand (Produce v3, one v2 record batch), so tests can put on the broker
//! what rskafka itself cannot read back, such as a header name that is not
//! UTF-8.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One record's parts, as raw bytes.
pub struct RawBatchRecord<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub headers: &'a [(&'a [u8], &'a [u8])],
}

/// Produces `record` alone in a batch to `topic`/`partition` on the broker at
/// `broker` (which must lead the partition, as a single tansu does), with
/// `acks = -1`, and waits for the answer.
pub async fn produce(broker: SocketAddr, topic: &str, partition: i32, record: RawBatchRecord<'_>) {
    let batch = record_batch(&record);
    let mut body = Vec::new();
    body.extend(0_i16.to_be_bytes()); // api key: Produce
    body.extend(3_i16.to_be_bytes()); // api version
    body.extend(1_i32.to_be_bytes()); // correlation id
    put_string(&mut body, b"oms-testkit-raw");
    body.extend((-1_i16).to_be_bytes()); // no transactional id
    body.extend((-1_i16).to_be_bytes()); // acks: all
    body.extend(5_000_i32.to_be_bytes()); // timeout
    body.extend(1_i32.to_be_bytes()); // one topic
    put_string(&mut body, topic.as_bytes());
    body.extend(1_i32.to_be_bytes()); // one partition
    body.extend(partition.to_be_bytes());
    body.extend((batch.len() as i32).to_be_bytes());
    body.extend(&batch);

    let mut stream = TcpStream::connect(broker)
        .await
        .expect("connect to the broker");
    let mut request = (body.len() as i32).to_be_bytes().to_vec();
    request.extend(body);
    stream.write_all(&request).await.expect("send produce");
    let size = stream.read_i32().await.expect("produce answer size");
    let mut answer = vec![0; size as usize];
    stream
        .read_exact(&mut answer)
        .await
        .expect("produce answer");
    // correlation id (4), topics (4), name (2 + n), partitions (4),
    // partition (4), then the error code.
    let at = 4 + 4 + 2 + topic.len() + 4 + 4;
    let error_code = i16::from_be_bytes([answer[at], answer[at + 1]]);
    assert_eq!(error_code, 0, "the broker refused the hand-made batch");
}

fn record_batch(record: &RawBatchRecord<'_>) -> Vec<u8> {
    let mut encoded = Vec::new();
    encoded.push(0); // attributes
    put_varint(&mut encoded, 0); // timestamp delta
    put_varint(&mut encoded, 0); // offset delta
    put_varint(&mut encoded, record.key.len() as i64);
    encoded.extend(record.key);
    put_varint(&mut encoded, record.value.len() as i64);
    encoded.extend(record.value);
    put_varint(&mut encoded, record.headers.len() as i64);
    for (name, value) in record.headers {
        put_varint(&mut encoded, name.len() as i64);
        encoded.extend(*name);
        put_varint(&mut encoded, value.len() as i64);
        encoded.extend(*value);
    }
    let mut records = Vec::new();
    put_varint(&mut records, encoded.len() as i64);
    records.extend(encoded);

    let now = chrono::Utc::now().timestamp_millis();
    // From attributes on: the part the CRC covers.
    let mut tail = Vec::new();
    tail.extend(0_i16.to_be_bytes()); // attributes: no compression
    tail.extend(0_i32.to_be_bytes()); // last offset delta
    tail.extend(now.to_be_bytes()); // first timestamp
    tail.extend(now.to_be_bytes()); // max timestamp
    tail.extend((-1_i64).to_be_bytes()); // producer id
    tail.extend((-1_i16).to_be_bytes()); // producer epoch
    tail.extend((-1_i32).to_be_bytes()); // base sequence
    tail.extend(1_i32.to_be_bytes()); // record count
    tail.extend(records);

    let mut batch = Vec::new();
    batch.extend(0_i64.to_be_bytes()); // base offset
    // batch length: leader epoch (4) + magic (1) + crc (4) + tail
    batch.extend(((4 + 1 + 4 + tail.len()) as i32).to_be_bytes());
    batch.extend(0_i32.to_be_bytes()); // partition leader epoch
    batch.push(2); // magic
    batch.extend(crc32c::crc32c(&tail).to_be_bytes());
    batch.extend(tail);
    batch
}

fn put_string(buffer: &mut Vec<u8>, value: &[u8]) {
    buffer.extend((value.len() as i16).to_be_bytes());
    buffer.extend(value);
}

/// Kafka's zig-zag varint.
fn put_varint(buffer: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    loop {
        let byte = (zigzag & 0x7f) as u8;
        zigzag >>= 7;
        if zigzag == 0 {
            buffer.push(byte);
            return;
        }
        buffer.push(byte | 0x80);
    }
}
