import { useEffect, useRef } from 'preact/hooks';
import { BarController, BarElement, CategoryScale, Chart, Legend, LinearScale, Tooltip } from 'chart.js';

// Only what bar charts need: the bundle stays a fraction of Chart.js's full build.
Chart.register(BarController, BarElement, CategoryScale, LinearScale, Legend, Tooltip);

export interface Series {
  label: string;
  values: number[];
  color: string;
}

/**
 * A stacked bar chart. The canvas is an image to assistive technology, labelled with a summary;
 * the numbers themselves are in the table each chart comes with.
 */
export function BarChart({ labels, series, summary, id }: { labels: string[]; series: Series[]; summary: string; id: string }) {
  const canvas = useRef<HTMLCanvasElement>(null);
  const chart = useRef<Chart | null>(null);
  useEffect(() => {
    chart.current = new Chart(canvas.current!, {
      type: 'bar',
      data: { labels: [], datasets: [] },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true, title: { display: true, text: 'tokens' } } },
        plugins: { legend: { position: 'bottom' } },
      },
    });
    return () => chart.current?.destroy();
  }, []);
  useEffect(() => {
    const c = chart.current;
    if (!c) return;
    c.data.labels = labels;
    c.data.datasets = series.map((s) => ({ label: s.label, data: s.values, backgroundColor: s.color }));
    c.update();
  }, [JSON.stringify(labels), JSON.stringify(series)]);
  return (
    <div class="chart-box">
      <canvas ref={canvas} id={id} role="img" aria-label={summary} data-points={String(labels.length)} />
    </div>
  );
}
