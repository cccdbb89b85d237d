package main

import (
	"bufio"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestIdOfReadsTheTopLevelFieldOnly(t *testing.T) {
	body := []byte(`{"nested": {"case_id": "inner"}, "list": [1, {"case_id": "x"}], "case_id": "c-1", "n": 2}`)
	if got := idOf(body, "case_id"); got != "c-1" {
		t.Fatalf("idOf = %q, want c-1", got)
	}
	for _, bad := range []string{`[]`, `{"case_id": 5}`, `{"other": "x"}`, `not json`, ``} {
		if got := idOf([]byte(bad), "case_id"); got != "" {
			t.Fatalf("idOf(%q) = %q, want empty", bad, got)
		}
	}
}

func TestReadRequestsSplitsTokenAndBody(t *testing.T) {
	got, err := readRequests(strings.NewReader("tok-a\t{\"a\": \"x\\ty\"}\n\ntok-b\t{}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].auth != "Bearer tok-a" || string(got[0].body) != `{"a": "x\ty"}` ||
		got[1].auth != "Bearer tok-b" || string(got[1].body) != "{}" {
		t.Fatalf("requests = %+v", got)
	}
	for _, bad := range []string{"", "\n\n", "no tab here\n", "\t{}\n"} {
		if _, err := readRequests(strings.NewReader(bad)); err == nil {
			t.Fatalf("readRequests(%q) accepted it", bad)
		}
	}
}

func TestScheduleIsRateTimesDuration(t *testing.T) {
	if n := requestCount(20, 2*time.Second); n != 40 {
		t.Fatalf("requestCount = %d, want 40", n)
	}
	if n := requestCount(0.1, time.Second); n != 1 {
		t.Fatalf("requestCount = %d, want at least 1", n)
	}
	if d := dueOffset(30, 20); d != 1500*time.Millisecond {
		t.Fatalf("dueOffset = %v, want 1.5s", d)
	}
}

// A slow server must not slow the offered load: 40 requests at 100/s against answers that
// take 300 ms end in about 0.4 + 0.3 s (closed loop on 4 connections would take 3 s), each
// with its own key, and latency counted from the due time includes the server's 300 ms.
func TestOpenLoopAgainstASlowServer(t *testing.T) {
	var mu sync.Mutex
	keys := map[string]bool{}
	auths := map[string]int{}
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		keys[r.Header.Get("Idempotency-Key")] = true
		auths[r.Header.Get("Authorization")]++
		mu.Unlock()
		time.Sleep(300 * time.Millisecond)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte(`{"status": "submitted", "case_id": "id-` + string(body[1:2]) + `"}`))
	}))
	defer server.Close()
	out := filepath.Join(t.TempDir(), "answers.tsv")
	cfg := config{
		urls: []string{server.URL}, rate: 100, duration: 400 * time.Millisecond, connections: 64,
		maxInflight: 4096, idField: "case_id", out: out, runID: "t", timeout: 5 * time.Second,
		quiet: true,
	}
	g := &generator{
		cfg:      cfg,
		client:   newClient(cfg),
		requests: []request{{auth: "Bearer a", body: []byte("[a]")}, {auth: "Bearer b", body: []byte("[b]")}},
		answers:  make([]answer, requestCount(cfg.rate, cfg.duration)),
	}
	wall := g.run()
	if wall > 1500*time.Millisecond {
		t.Fatalf("took %v: the load waited for answers", wall)
	}
	if len(keys) != 40 || auths["Bearer a"] != 20 || auths["Bearer b"] != 20 {
		t.Fatalf("keys %d, auths %v", len(keys), auths)
	}
	if err := g.writeAnswers(out); err != nil {
		t.Fatal(err)
	}
	f, _ := os.Open(out)
	defer f.Close()
	lines := 0
	for scanner := bufio.NewScanner(f); scanner.Scan(); lines++ {
		fields := strings.Split(scanner.Text(), "\t")
		if len(fields) != 5 || fields[1] != "201" || (fields[4] != "id-a" && fields[4] != "id-b") {
			t.Fatalf("answer line %q", scanner.Text())
		}
	}
	if lines != 40 {
		t.Fatalf("%d answers, want 40", lines)
	}
	for _, a := range g.answers {
		if a.latencyNs < int64(300*time.Millisecond) {
			t.Fatalf("latency %v shorter than the server's answer", time.Duration(a.latencyNs))
		}
	}
	if s := g.summary(wall); s.Sent != 40 || s.Answered != 40 || s.Late != 0 || s.Statuses["201"] != 40 {
		t.Fatalf("summary %+v", s)
	}
}

// With max-inflight 5 and answers that take longer than the whole run, only 5 are sent and
// the rest are counted late; a refused connection is status 0.
func TestLateAndNoAnswer(t *testing.T) {
	release := make(chan struct{})
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
		w.WriteHeader(http.StatusTooManyRequests)
	}))
	defer server.Close()
	cfg := config{
		urls: []string{server.URL}, rate: 200, duration: 100 * time.Millisecond, connections: 8,
		maxInflight: 5, idField: "case_id", runID: "t", timeout: 5 * time.Second, quiet: true,
	}
	g := &generator{cfg: cfg, client: newClient(cfg), requests: []request{{auth: "Bearer a", body: []byte("{}")}},
		answers: make([]answer, requestCount(cfg.rate, cfg.duration))}
	go func() { time.Sleep(300 * time.Millisecond); close(release) }()
	g.run()
	if s := g.summary(0); s.Sent != 5 || s.Late != 15 || s.Statuses["429"] != 5 {
		t.Fatalf("summary %+v", s)
	}

	server.Close()
	cfg.maxInflight = 4096
	g = &generator{cfg: cfg, client: newClient(cfg), requests: g.requests,
		answers: make([]answer, 3)}
	g.run()
	if s := g.summary(0); s.Statuses["0"] != 3 {
		t.Fatalf("summary %+v", s)
	}
}
