/**
 * A withheld output as the reviewer sees it, shared by the Pending outputs
 * sidebar and the review in the main area: drawn by JupyterLab's own
 * renderers (rendermime, untrusted), with the filter's findings placed on the
 * table cells (or rows) their locations name.
 */
import { IRenderMimeRegistry } from '@jupyterlab/rendermime';
import { OutputAreaModel, SimplifiedOutputArea } from '@jupyterlab/outputarea';

import { columnIndex, parseLocation } from '../reviews';
import { IFinding, INbOutput, IOutputView, JSONObject } from '../tokens';

/** An output item (or a variant's content) as nbformat, for JupyterLab's renderers. */
export function reviewOutput(
  item: Pick<IOutputView, 'msg_type' | 'content'>
): INbOutput {
  const content: JSONObject = item.content ?? {};
  if (item.msg_type === 'stream') {
    return {
      output_type: 'stream',
      name: content.name ?? 'stdout',
      text: content.text ?? ''
    };
  }
  if (item.msg_type === 'error') {
    return {
      output_type: 'error',
      ename: content.ename ?? '',
      evalue: content.evalue ?? '',
      traceback: content.traceback ?? []
    };
  }
  return {
    output_type: 'display_data',
    data: content.data ?? {},
    metadata: {}
  };
}

/**
 * Marks the table cells (or rows) named by the findings' locations: a class
 * for the colour, the finding's number (`data-rk-finding`, "1" or "1,3") and a
 * tooltip. Returns the indices of the findings it placed.
 */
export function markFindings(
  root: HTMLElement,
  findings: IFinding[]
): number[] {
  const placed: number[] = [];
  const table = root.querySelector('table');
  if (!table) {
    return placed;
  }
  const headerRows = table.querySelectorAll('thead tr');
  const texts = (row: Element | undefined) =>
    row ? Array.from(row.children).map(c => c.textContent?.trim() ?? '') : [];
  const header = texts(headerRows[headerRows.length - 1]);
  const firstHeader = texts(headerRows[0]);
  const bodyRows = Array.from(table.querySelectorAll('tbody tr'));
  findings.forEach((finding, index) => {
    const where = parseLocation(finding.location);
    if (!where || where.row >= bodyRows.length) {
      return;
    }
    const row = bodyRows[where.row] as HTMLElement;
    let target: HTMLElement = row;
    if (where.column !== null) {
      const cell = columnIndex(
        header,
        firstHeader,
        row.children.length,
        where.column
      );
      if (cell >= 0) {
        target = row.children[cell] as HTMLElement;
      }
    }
    target.classList.add(
      finding.verdict === 'block' ? 'rk-finding-block' : 'rk-finding'
    );
    const numbers = target.dataset.rkFinding;
    target.dataset.rkFinding = numbers
      ? `${numbers},${index + 1}`
      : String(index + 1);
    const note = `${index + 1}. ${finding.check}: ${finding.message}`;
    target.title = target.title ? `${target.title}\n${note}` : note;
    placed.push(index);
  });
  return placed;
}

/**
 * A new output area showing one output (untrusted: no scripts run). Its
 * findings are marked once the renderer has drawn the table; `onMarked` gets
 * the indices of the findings placed on it (called once, [] if none).
 */
export function withheldOutputArea(
  output: INbOutput,
  rendermime: IRenderMimeRegistry,
  findings: IFinding[] = [],
  onMarked?: (placed: number[]) => void
): SimplifiedOutputArea {
  const model = new OutputAreaModel({ trusted: false });
  model.fromJSON([output as any]);
  const area = new SimplifiedOutputArea({ model, rendermime });
  area.disposed.connect(() => model.dispose());
  if (!findings.length) {
    onMarked?.([]);
    return area;
  }
  // Renderers finish asynchronously; mark the table once it is in the DOM.
  const mark = (tries: number) => {
    if (area.isDisposed) {
      return;
    }
    const placed = markFindings(area.node, findings);
    if (placed.length === 0 && tries > 0 && !area.node.querySelector('table')) {
      window.setTimeout(() => mark(tries - 1), 100);
      return;
    }
    onMarked?.(placed);
  };
  window.setTimeout(() => mark(20), 50);
  return area;
}
