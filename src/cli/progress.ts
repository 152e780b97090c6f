import cliProgress from 'cli-progress';

/**
 * A progress callback rendered as a bar on stderr when it is a terminal (silent otherwise). `eta` (seconds) is the
 * caller's estimate where it knows better than the bar's recent rate (a quantization: from its finished blocks).
 */
export function progressBar(label: string): { update: (done: number, total: number, eta?: number) => void; stop: () => void } {
  if (!process.stderr.isTTY) return { update: () => {}, stop: () => {} };
  const { Formatter, TimeFormat } = cliProgress.Format;
  const bar = new cliProgress.SingleBar(
    {
      format: (options, params, payload: { eta?: number }) => {
        const eta = payload.eta === undefined ? '{eta_formatted}' : TimeFormat(payload.eta, options, 5);
        const format = `${label.padEnd(18)} {bar} {value}/{total} | {duration_formatted} elapsed | eta ${eta}`;
        return Formatter({ ...options, format }, params, payload);
      },
      stream: process.stderr,
      hideCursor: true,
    },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  return {
    update(done, total, eta) {
      if (!started) {
        bar.start(total, 0);
        started = true;
      }
      bar.update(done, { eta });
    },
    stop() {
      if (started) bar.stop();
      started = false;
    },
  };
}
