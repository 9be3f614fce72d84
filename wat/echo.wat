;; echo.wat: the zero-dependency default guest.
;;
;; What it does: reads the whole dispatch from stdin (one JSON line, then EOF),
;; finds the raw, still-JSON-escaped values of "kind" and "prompt" by scanning
;; (the contract fixes the key order and forbids whitespace, so the first
;; `"kind":"` and `"prompt":"` are the keys), and writes exactly one stdout line
;;
;;     {"type":"final","text":"echo (KIND): PROMPT"}
;;
;; KIND and PROMPT are copied verbatim in their escaped form, so the line stays
;; valid JSON without ever unescaping. The line is assembled in memory and sent
;; with a single fd_write (looping only if the host accepts a partial write).
;; It then returns from _start (exit code 0).
;;
;; What it is for: the default guest of `cairn run` and the benchmark baseline:
;; it has no dependencies, starts fast and exercises stdin, stdout and the
;; dispatch format end to end.
;;
;; Failures: stdin over 1 MiB, a read error, or a dispatch without the two
;; fields: a line on stderr and proc_exit(2).
(module
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param $fd i32) (param $iovs i32) (param $iovs_len i32) (param $nread i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param $fd i32) (param $iovs i32) (param $iovs_len i32) (param $nwritten i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit"
    (func $proc_exit (param $code i32)))

  ;; 35 pages = 2240 KiB: room for the 1 MiB input and the up-to-1 MiB output.
  (memory (export "memory") 35)

  ;; ---- memory layout ---------------------------------------------------
  (global $IOV i32 (i32.const 0))          ;; one iovec {buf, len}
  (global $NUM i32 (i32.const 8))          ;; nread / nwritten out-parameter
  (global $IN i32 (i32.const 0x10000))     ;; stdin buffer (IN_CAP + 1 bytes)
  (global $IN_CAP i32 (i32.const 0x100000));; 1 MiB: more input is an error
  (global $OUT i32 (i32.const 0x120000))   ;; the assembled output line

  ;; ---- constant strings (address, length) ------------------------------
  (global $S_PROMPT_KEY i32 (i32.const 64))
  (global $S_PROMPT_KEY_LEN i32 (i32.const 10))
  (data (i32.const 64) "\"prompt\":\"")
  (global $S_KIND_KEY i32 (i32.const 80))
  (global $S_KIND_KEY_LEN i32 (i32.const 8))
  (data (i32.const 80) "\"kind\":\"")
  (global $S_HEAD i32 (i32.const 96))
  (global $S_HEAD_LEN i32 (i32.const 30))
  (data (i32.const 96) "{\"type\":\"final\",\"text\":\"echo (")
  (global $S_MID i32 (i32.const 128))
  (global $S_MID_LEN i32 (i32.const 3))
  (data (i32.const 128) "): ")
  (global $S_TAIL i32 (i32.const 136))
  (global $S_TAIL_LEN i32 (i32.const 3))
  (data (i32.const 136) "\"}\n")
  (global $S_ERR_READ i32 (i32.const 160))
  (global $S_ERR_READ_LEN i32 (i32.const 28))
  (data (i32.const 160) "echo: cannot read the stdin\n")
  (global $S_ERR_BIG i32 (i32.const 192))
  (global $S_ERR_BIG_LEN i32 (i32.const 40))
  (data (i32.const 192) "echo: the dispatch is larger than 1 MiB\n")
  (global $S_ERR_FIELD i32 (i32.const 240))
  (global $S_ERR_FIELD_LEN i32 (i32.const 52))
  (data (i32.const 240) "echo: the dispatch has no \"kind\" or \"prompt\" string\n")

  ;; Write a message to stderr and exit with `code`.
  (func $die (param $msg i32) (param $len i32) (param $code i32)
    (drop (call $write_all (i32.const 2) (local.get $msg) (local.get $len)))
    (call $proc_exit (local.get $code)))

  ;; Write all `len` bytes at `ptr` to `fd`; returns 0 or the WASI errno
  ;; (29, EIO, when the host accepts nothing).
  (func $write_all (param $fd i32) (param $ptr i32) (param $len i32) (result i32)
    (local $err i32)
    (block $done
      (loop $more
        (br_if $done (i32.eqz (local.get $len)))
        (i32.store (global.get $IOV) (local.get $ptr))
        (i32.store offset=4 (global.get $IOV) (local.get $len))
        (local.set $err
          (call $fd_write (local.get $fd) (global.get $IOV) (i32.const 1) (global.get $NUM)))
        (if (local.get $err) (then (return (local.get $err))))
        (if (i32.eqz (i32.load (global.get $NUM))) (then (return (i32.const 29))))
        (local.set $ptr (i32.add (local.get $ptr) (i32.load (global.get $NUM))))
        (local.set $len (i32.sub (local.get $len) (i32.load (global.get $NUM))))
        (br $more)))
    (i32.const 0))

  ;; Read stdin until EOF into $IN; returns the number of bytes read.
  ;; The iovec offers one byte more than IN_CAP so that overflow is noticed.
  (func $read_stdin (result i32)
    (local $len i32)
    (block $eof
      (loop $more
        (i32.store (global.get $IOV) (i32.add (global.get $IN) (local.get $len)))
        (i32.store offset=4 (global.get $IOV)
          (i32.sub (i32.add (global.get $IN_CAP) (i32.const 1)) (local.get $len)))
        (if (call $fd_read (i32.const 0) (global.get $IOV) (i32.const 1) (global.get $NUM))
          (then (call $die (global.get $S_ERR_READ) (global.get $S_ERR_READ_LEN) (i32.const 2))))
        (br_if $eof (i32.eqz (i32.load (global.get $NUM))))
        (local.set $len (i32.add (local.get $len) (i32.load (global.get $NUM))))
        ;; past the cap: stop before offering an empty iovec
        (br_if $eof (i32.gt_u (local.get $len) (global.get $IN_CAP)))
        (br $more)))
    (if (i32.gt_u (local.get $len) (global.get $IN_CAP))
      (then (call $die (global.get $S_ERR_BIG) (global.get $S_ERR_BIG_LEN) (i32.const 2))))
    (local.get $len))

  ;; Find the first occurrence of needle[0..nlen] in hay[0..hlen]; returns the
  ;; address just past it, or 0 when it does not occur.
  (func $find_after (param $needle i32) (param $nlen i32) (param $hay i32) (param $hlen i32) (result i32)
    (local $at i32) (local $last i32) (local $j i32)
    (if (i32.lt_u (local.get $hlen) (local.get $nlen)) (then (return (i32.const 0))))
    (local.set $at (local.get $hay))
    (local.set $last (i32.add (local.get $hay) (i32.sub (local.get $hlen) (local.get $nlen))))
    (block $absent
      (loop $scan
        (br_if $absent (i32.gt_u (local.get $at) (local.get $last)))
        (local.set $j (i32.const 0))
        (block $mismatch
          (loop $compare
            (br_if $mismatch
              (i32.ne (i32.load8_u (i32.add (local.get $at) (local.get $j)))
                      (i32.load8_u (i32.add (local.get $needle) (local.get $j)))))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (if (i32.eq (local.get $j) (local.get $nlen))
              (then (return (i32.add (local.get $at) (local.get $nlen)))))
            (br $compare)))
        (local.set $at (i32.add (local.get $at) (i32.const 1)))
        (br $scan)))
    (i32.const 0))

  ;; Given the address just past a JSON string's opening quote, return the
  ;; address of its closing quote (the next `"` not escaped by a backslash),
  ;; or 0 when the string does not end before `end`.
  (func $string_end (param $p i32) (param $end i32) (result i32)
    (local $c i32)
    (block $unterminated
      (loop $scan
        (br_if $unterminated (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $c (i32.load8_u (local.get $p)))
        (if (i32.eq (local.get $c) (i32.const 34)) ;; '"'
          (then (return (local.get $p))))
        ;; a backslash escapes the byte after it, whatever it is
        (local.set $p (i32.add (local.get $p)
          (select (i32.const 2) (i32.const 1) (i32.eq (local.get $c) (i32.const 92)))))
        (br $scan)))
    (i32.const 0))

  ;; Copy len bytes from src to dst; returns dst + len.
  (func $put (param $dst i32) (param $src i32) (param $len i32) (result i32)
    (memory.copy (local.get $dst) (local.get $src) (local.get $len))
    (i32.add (local.get $dst) (local.get $len)))

  (func $main (export "_start")
    (local $in_len i32) (local $in_end i32)
    (local $kind i32) (local $kind_end i32)
    (local $prompt i32) (local $prompt_end i32)
    (local $out i32)

    (local.set $in_len (call $read_stdin))
    (local.set $in_end (i32.add (global.get $IN) (local.get $in_len)))

    ;; locate the raw (escaped) kind and prompt values
    (local.set $kind (call $find_after (global.get $S_KIND_KEY) (global.get $S_KIND_KEY_LEN)
                                       (global.get $IN) (local.get $in_len)))
    (local.set $prompt (call $find_after (global.get $S_PROMPT_KEY) (global.get $S_PROMPT_KEY_LEN)
                                         (global.get $IN) (local.get $in_len)))
    (if (i32.or (i32.eqz (local.get $kind)) (i32.eqz (local.get $prompt)))
      (then (call $die (global.get $S_ERR_FIELD) (global.get $S_ERR_FIELD_LEN) (i32.const 2))))
    (local.set $kind_end (call $string_end (local.get $kind) (local.get $in_end)))
    (local.set $prompt_end (call $string_end (local.get $prompt) (local.get $in_end)))
    (if (i32.or (i32.eqz (local.get $kind_end)) (i32.eqz (local.get $prompt_end)))
      (then (call $die (global.get $S_ERR_FIELD) (global.get $S_ERR_FIELD_LEN) (i32.const 2))))

    ;; {"type":"final","text":"echo (KIND): PROMPT"}\n
    (local.set $out (global.get $OUT))
    (local.set $out (call $put (local.get $out) (global.get $S_HEAD) (global.get $S_HEAD_LEN)))
    (local.set $out (call $put (local.get $out) (local.get $kind)
                                (i32.sub (local.get $kind_end) (local.get $kind))))
    (local.set $out (call $put (local.get $out) (global.get $S_MID) (global.get $S_MID_LEN)))
    (local.set $out (call $put (local.get $out) (local.get $prompt)
                                (i32.sub (local.get $prompt_end) (local.get $prompt))))
    (local.set $out (call $put (local.get $out) (global.get $S_TAIL) (global.get $S_TAIL_LEN)))

    (if (call $write_all (i32.const 1) (global.get $OUT) (i32.sub (local.get $out) (global.get $OUT)))
      (then (call $proc_exit (i32.const 1)))))
)
