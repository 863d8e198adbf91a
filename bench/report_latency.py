"""Report latency and throughput, end to end with a real PACS.

storescu sends standard lumbar phantom studies (SYNTHETIC; sagittal T1, T2,
STIR, axial T2) to a running spineagent daemon, which analyzes them with the
default bundle and C-STOREs the SR and SEG to Orthanc. Measured:

- latency: from storescu's exit (the last instance acknowledged and the
  association released) to the SR being listed by Orthanc's REST API,
  one study at a time; split into the configured study idle time (the
  daemon cannot know a study is over before it), the daemon's own analysis
  time (spineagent_report_seconds) and the rest (queueing, C-STORE, Orthanc);
- throughput: four scanners (four storescu processes) each sending studies
  back to back; studies per hour from the first send to the last SR.

Called by bench/report_latency.sh, which starts the daemon and Orthanc.
  report_latency.py WORK DAEMON_PORT METRICS_PORT ORTHANC_HTTP STUDY_IDLE RUNS PER_SCANNER
"""

import json
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

SR = "1.2.840.10008.5.1.4.1.1.88.34"


def orthanc_find(http, study):
    body = json.dumps({"Level": "Instance", "Query": {"StudyInstanceUID": study, "SOPClassUID": SR}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{http}/tools/find", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def wait_sr(http, study, timeout=600.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if orthanc_find(http, study):
            return time.monotonic()
        time.sleep(0.01)
    raise SystemExit(f"no SR for {study} in Orthanc after {timeout} s")


def metric(port, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def send(port, files):
    subprocess.run(
        ["storescu", "-q", "-aet", "SCANNER", "-aec", "SPINEAGENT", "127.0.0.1", str(port), *files],
        check=True,
    )


def study_of(work, seed):
    d = f"{work}/study_{seed}"
    truth = json.load(open(f"{d}/truth.json"))
    files = sorted(subprocess.run(["find", d, "-name", "*.dcm"], capture_output=True, text=True).stdout.split())
    return truth["study_instance_uid"], files


def main():
    work, port, mport, http = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    idle, runs, per_scanner = float(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
    seeds = json.load(open(f"{work}/seeds.json"))
    latency, analysis = [], []
    for seed in seeds["latency"][:runs]:
        study, files = study_of(work, seed)
        n0, s0 = metric(mport, "spineagent_report_seconds_count"), metric(mport, "spineagent_report_seconds_sum")
        send(port, files)
        acked = time.monotonic()
        stored = wait_sr(http, study)
        # The report metric is counted just after the SR is queued.
        while metric(mport, "spineagent_report_seconds_count") < n0 + 1:
            time.sleep(0.01)
        latency.append(stored - acked)
        analysis.append(metric(mport, "spineagent_report_seconds_sum") - s0)
        print(f"  study {seed}: {len(files)} instances, SR in Orthanc {stored - acked:.2f} s after the last ack",
              file=sys.stderr)

    # Four scanners at once.
    groups = [seeds["throughput"][i::4][:per_scanner] for i in range(4)]
    studies = [study_of(work, s) for g in groups for s in g]
    started = time.monotonic()
    threads = [threading.Thread(target=lambda g=g: [send(port, study_of(work, s)[1]) for s in g]) for g in groups]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    last = max(wait_sr(http, uid) for uid, _ in studies)
    elapsed = last - started
    result = {
        "study_idle_seconds": idle,
        "latency_median_s": statistics.median(latency),
        "latency_max_s": max(latency),
        "analysis_median_s": statistics.median(analysis),
        "rest_median_s": statistics.median(l - a - idle for l, a in zip(latency, analysis)),
        "runs": len(latency),
        "instances_per_study": len(study_of(work, seeds["latency"][0])[1]),
        "throughput_studies": len(studies),
        "throughput_seconds": elapsed,
        "studies_per_hour": len(studies) / elapsed * 3600.0,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
