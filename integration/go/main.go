// Command kafkago-produce: a segmentio/kafka-go producer for idemproxy's integration tests.
//
//	kafkago-produce <bootstrap> <topic> <n> [none|gzip|snappy|lz4|zstd]
//
// kafka-go has no idempotent producer: every batch goes out with producer id -1.
// Retries stay on (Writer.MaxAttempts, default 10). Values are "<tag>-<i>" (tag from
// IDEMPROXY_TAG, default "kgo"), no keys, round-robin over partitions. Messages are
// written PER_CALL at a time with WriteMessages (synchronous), so a lost
// acknowledgement is retried by the writer itself. Prints one JSON line:
// {"client":"kafka-go","sent":n,"acked":a,"errors":[...]}.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/compress"
)

const perCall = 10

type result struct {
	Client string   `json:"client"`
	Sent   int      `json:"sent"`
	Acked  int      `json:"acked"`
	Errors []string `json:"errors"`
}

func codec(name string) (compress.Compression, bool) {
	switch strings.ToLower(name) {
	case "none", "":
		return 0, true
	case "gzip":
		return compress.Gzip, true
	case "snappy":
		return compress.Snappy, true
	case "lz4":
		return compress.Lz4, true
	case "zstd":
		return compress.Zstd, true
	}
	return 0, false
}

func main() {
	if len(os.Args) < 4 {
		fmt.Fprintln(os.Stderr, "usage: kafkago-produce <bootstrap> <topic> <n> [none|gzip|snappy|lz4|zstd]")
		os.Exit(2)
	}
	bootstrap, topic := os.Args[1], os.Args[2]
	n, err := strconv.Atoi(os.Args[3])
	codecName := "none"
	if len(os.Args) > 4 {
		codecName = os.Args[4]
	}
	comp, ok := codec(codecName)
	if err != nil || n < 0 || !ok {
		fmt.Fprintln(os.Stderr, "bad arguments")
		os.Exit(2)
	}
	tag := os.Getenv("IDEMPROXY_TAG")
	if tag == "" {
		tag = "kgo"
	}

	w := &kafka.Writer{
		Addr:                   kafka.TCP(strings.Split(bootstrap, ",")...),
		Topic:                  topic,
		Balancer:               &kafka.RoundRobin{},
		RequiredAcks:           kafka.RequireAll,
		Compression:            comp,
		MaxAttempts:            10, // the default, stated on purpose: retries on
		WriteBackoffMin:        100 * time.Millisecond,
		WriteBackoffMax:        time.Second,
		BatchSize:              perCall,
		BatchTimeout:           5 * time.Millisecond,
		WriteTimeout:           10 * time.Second,
		AllowAutoTopicCreation: false,
	}
	res := result{Client: "kafka-go", Sent: n, Errors: []string{}}
	for i := 0; i < n; i += perCall {
		msgs := make([]kafka.Message, 0, perCall)
		for j := i; j < n && j < i+perCall; j++ {
			msgs = append(msgs, kafka.Message{Value: []byte(fmt.Sprintf("%s-%06d", tag, j))})
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		err := w.WriteMessages(ctx, msgs...)
		cancel()
		var werr kafka.WriteErrors
		switch {
		case err == nil:
			res.Acked += len(msgs)
		case errors.As(err, &werr):
			for _, e := range werr {
				if e == nil {
					res.Acked++
				} else {
					res.Errors = append(res.Errors, e.Error())
				}
			}
		default:
			res.Errors = append(res.Errors, err.Error())
		}
	}
	if err := w.Close(); err != nil {
		res.Errors = append(res.Errors, "close: "+err.Error())
	}
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
}
