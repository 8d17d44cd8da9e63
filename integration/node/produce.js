#!/usr/bin/env node
// kafkajs producer with idempotence off and retries on, for idemproxy's integration tests.
//
//   node produce.js <bootstrap> <topic> <n> [none|gzip] [--per-send K] [--keyed]
//
// Values are "<tag>-<i>" (tag from IDEMPROXY_TAG, default "kjs"), no keys, so the
// default partitioner spreads them round-robin. With --keyed each message has the key
// "k<i mod 7>", so the partitioner hashes it to the same partition on every try. Messages go out K per producer.send()
// call (default 10), one call at a time, so a lost acknowledgement is retried by
// kafkajs itself. Prints one JSON line: {"client":"kafkajs","sent":n,"acked":a,"errors":[...]}.
'use strict'

const { Kafka, CompressionTypes, logLevel } = require('kafkajs')

function usage() {
  process.stderr.write('usage: produce.js <bootstrap> <topic> <n> [none|gzip] [--per-send K] [--keyed]\n')
  process.exit(2)
}

async function main(argv) {
  if (argv.length < 3) usage()
  const [bootstrap, topic, nText] = argv
  const codecName = (argv[3] && !argv[3].startsWith('--') ? argv[3] : 'none').toLowerCase()
  const perSendAt = argv.indexOf('--per-send')
  const perSend = perSendAt >= 0 ? parseInt(argv[perSendAt + 1], 10) : 10
  const keyed = argv.includes('--keyed')
  const n = parseInt(nText, 10)
  const codecs = { none: CompressionTypes.None, gzip: CompressionTypes.GZIP }
  if (!(codecName in codecs) || !(n >= 0) || !(perSend > 0)) usage()
  const tag = process.env.IDEMPROXY_TAG || 'kjs'

  const kafka = new Kafka({
    clientId: 'idemproxy-kafkajs',
    brokers: bootstrap.split(','),
    logLevel: process.env.KAFKAJS_DEBUG ? logLevel.DEBUG : logLevel.NOTHING,
    connectionTimeout: 3000,
    requestTimeout: 10000,
  })
  // idempotent: false is kafkajs' default, stated here on purpose; retries 5 is its
  // default for a non-idempotent producer (src/producer/index.js), raised a little.
  const producer = kafka.producer({
    idempotent: false,
    allowAutoTopicCreation: false,
    retry: { retries: 8, initialRetryTime: 100 },
  })
  await producer.connect()
  let acked = 0
  const errors = []
  try {
    for (let i = 0; i < n; i += perSend) {
      const messages = []
      for (let j = i; j < Math.min(n, i + perSend); j++) {
        const value = `${tag}-${String(j).padStart(6, '0')}`
        messages.push(keyed ? { key: `k${j % 7}`, value } : { value })
      }
      const t0 = Date.now()
      try {
        await producer.send({
          topic,
          acks: -1,
          compression: codecs[codecName],
          messages,
        })
        acked += messages.length
      } catch (e) {
        errors.push(`${e.name}: ${e.message}`)
      }
      if (process.env.KAFKAJS_DEBUG) process.stderr.write(`send ${i}: ${Date.now() - t0} ms\n`)
    }
  } finally {
    await producer.disconnect()
  }
  process.stdout.write(JSON.stringify({ client: 'kafkajs', sent: n, acked, errors }) + '\n')
}

main(process.argv.slice(2)).catch(e => {
  process.stderr.write(`${e.stack || e}\n`)
  process.exit(1)
})
