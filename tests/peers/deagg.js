#!/usr/bin/env node
// Deaggregates Kinesis records with the official npm aws-kinesis-agg library (KPL format).
//
// stdin:  one JSON object per line, a record as GetRecords returned it:
//         {"shard_id", "sequence_number", "partition_key", "explicit_hash_key": str|null,
//          "data": base64}
// stdout: one JSON object per user record:
//         {"shard_id", "partition_key", "explicit_hash_key": str|null, "data": base64}
// A bad checksum, an undecodable aggregate or a malformed input line exits non-zero with
// a message on stderr; checksums are always verified.
// Library quirk, reported as is: a sub-record without an explicit_hash_key_index gets
// explicit_hash_key_table[0] when the table is not empty (PyPI aws_kinesis_agg does the same;
// conftest.parse_aggregate reads field presence the way the KCL does).
'use strict';

const readline = require('readline');
const agg = require('aws-kinesis-agg');

function fail(message) {
  process.stderr.write(`deagg.js: ${message}\n`);
  process.exit(1);
}

// aws-kinesis-agg expects the Kinesis record as Lambda delivers it (event.Records[i].kinesis):
// camelCase keys and base64 data.
function toLambdaRecord(input) {
  const record = {
    kinesisSchemaVersion: '1.0',
    partitionKey: input.partition_key,
    sequenceNumber: input.sequence_number,
    data: input.data,
  };
  if (input.explicit_hash_key !== null && input.explicit_hash_key !== undefined) {
    record.explicitPartitionKey = input.explicit_hash_key;
  }
  return record;
}

function deaggregate(input, lineNumber) {
  const where = `line ${lineNumber} (shard ${input.shard_id}, sequence ${input.sequence_number})`;
  let result = null;
  // The callback can fire several times: once per failing user record with an error, then
  // once at the end. Any error is fatal here.
  agg.deaggregateSync(toLambdaRecord(input), true, (err, userRecords) => {
    if (err) fail(`${where}: ${err.message || err}`);
    result = userRecords;
  });
  if (result === null) fail(`${where}: deaggregateSync never completed`);
  return result;
}

async function main() {
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  const out = [];
  let lineNumber = 0;
  for await (const line of lines) {
    lineNumber += 1;
    if (line.trim() === '') continue;
    let input;
    try {
      input = JSON.parse(line);
    } catch (err) {
      fail(`line ${lineNumber}: not JSON: ${err.message}`);
    }
    for (const user of deaggregate(input, lineNumber)) {
      const ehk = user.explicitPartitionKey;
      out.push(JSON.stringify({
        shard_id: input.shard_id,
        partition_key: user.partitionKey,
        explicit_hash_key: ehk === undefined || ehk === null ? null : String(ehk),
        data: user.data,
      }));
      if (out.length >= 1000) {
        process.stdout.write(out.join('\n') + '\n');
        out.length = 0;
      }
    }
  }
  if (out.length > 0) process.stdout.write(out.join('\n') + '\n');
}

main().catch((err) => fail(err.stack || String(err)));
