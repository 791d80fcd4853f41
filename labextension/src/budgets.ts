/**
 * Privacy budgets (the DP tier) as the Datasites panel shows them, as pure
 * functions over the server extension's `GET budgets` (no JupyterLab imports,
 * unit-tested with jest): one line per dataset under each researcher site,
 * "heart · ε 2.4 of 3 left", and a site that did not answer said as such.
 */
import { IBudgetSpending, IBudgetsPage } from './tokens';

/** A number of ε as people read it: at most 3 significant digits, no trailing zeros. */
export function epsilonText(value: number): string {
  return Number.isFinite(value) ? String(Number(value.toPrecision(3))) : '?';
}

/** "heart · ε 2.4 of 3 left": one budget line. */
export function budgetText(line: IBudgetSpending): string {
  return (
    `${line.dataset} · ε ${epsilonText(line.epsilon_left)} of ` +
    `${epsilonText(line.epsilon_total)} left`
  );
}

/** One line under a site in the Datasites panel. */
export interface IBudgetRow {
  dataset: string;
  text: string;
  /** Hover text: what was spent, in how many charges. */
  title: string;
  /** Nothing is left: every DP query on this dataset is refused. */
  spent: boolean;
}

/** What the panel shows under one site: its budget lines by dataset, or why there are none. */
export interface ISiteBudgets {
  rows: IBudgetRow[];
  /** The site did not answer (or the Jupyter server failed): said, not fatal. */
  error: string | null;
}

/** Which budget lines and error the panel shows under `site`. */
export function siteBudgets(page: IBudgetsPage, site: string): ISiteBudgets {
  const rows = page.budgets
    .filter(line => line.site === site)
    .sort((a, b) => a.dataset.localeCompare(b.dataset))
    .map(line => ({
      dataset: line.dataset,
      text: budgetText(line),
      title:
        `ε ${epsilonText(line.epsilon_spent)} spent in ${line.charges} ` +
        `charge${line.charges === 1 ? '' : 's'} of ${epsilonText(line.epsilon_total)}`,
      spent: !(line.epsilon_left > 0)
    }));
  const failed = page.errors.find(e => e.site === site || e.site === 'server');
  return {
    rows,
    error: failed ? `budgets not available: ${failed.message}` : null
  };
}
