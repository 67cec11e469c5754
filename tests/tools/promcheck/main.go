// promcheck runs Prometheus' own code on what Herald exports, for Herald's tests:
//
//	promcheck scrape CONTENT-TYPE < BODY
//	    parses a /metrics answer with the parser a Prometheus server scrapes with
//	    (model/textparse), and, for the Prometheus text format, lints it with promlint
//	    (what `promtool check metrics` runs); prints one line per sample: NAME LABELS VALUE
//	promcheck rules FILE
//	    validates a rule file as `promtool check rules` does (model/rulefmt with PromQL)
package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/model/textparse"
	"github.com/prometheus/prometheus/promql/parser"
)

func main() {
	if len(os.Args) < 3 {
		fail("usage: promcheck scrape CONTENT-TYPE < body | promcheck rules FILE")
	}
	switch os.Args[1] {
	case "scrape":
		scrape(os.Args[2])
	case "rules":
		rules(os.Args[2])
	default:
		fail("unknown command " + os.Args[1])
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, msg)
	os.Exit(1)
}

func scrape(contentType string) {
	body, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(err.Error())
	}
	p, err := textparse.New(body, contentType, labels.NewSymbolTable(), textparse.ParserOptions{})
	if err != nil {
		fail("content type: " + err.Error())
	}
	if p == nil {
		fail("no parser for content type " + contentType)
	}
	samples := 0
	for {
		entry, err := p.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			fail(fmt.Sprintf("parse error after %d samples: %v", samples, err))
		}
		if entry == textparse.EntrySeries {
			var l labels.Labels
			p.Labels(&l)
			_, _, v := p.Series()
			fmt.Printf("%s %s %v\n", l.Get(model.MetricNameLabel), l.String(), v)
			samples++
		}
	}
	if samples == 0 {
		fail("no samples")
	}
	// promlint reads the Prometheus text format (0.0.4).
	if bytes.HasPrefix([]byte(contentType), []byte("text/plain")) {
		problems, err := promlint.New(bytes.NewReader(body)).Lint()
		if err != nil {
			fail("lint: " + err.Error())
		}
		for _, pr := range problems {
			fmt.Fprintf(os.Stderr, "lint: %s: %s\n", pr.Metric, pr.Text)
		}
		if len(problems) > 0 {
			os.Exit(1)
		}
	}
}

func rules(file string) {
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	groups, errs := rulefmt.ParseFile(file, false, model.UTF8Validation, parser.NewParser(parser.Options{}), logger)
	for _, e := range errs {
		fmt.Fprintln(os.Stderr, e)
	}
	if len(errs) > 0 {
		os.Exit(1)
	}
	n := 0
	for _, g := range groups.Groups {
		n += len(g.Rules)
	}
	fmt.Printf("%d rules\n", n)
}
