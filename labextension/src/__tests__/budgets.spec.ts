/** Privacy budgets in the Datasites panel, and a researcher's DP context in a review. */
import { budgetText, epsilonText, siteBudgets } from '../budgets';
import { dpByDataset, spendingText } from '../reviews';
import { IBudgetLine, IDpAnswer } from '../tokens';

const line = (
  site: string,
  dataset: string,
  total: number,
  spent: number,
  charges = 1
): IBudgetLine => ({
  site,
  dataset,
  epsilon_total: total,
  epsilon_spent: spent,
  epsilon_left: total - spent,
  charges
});

describe('budgets in the Datasites panel', () => {
  it('says what is left per dataset, as people read it', () => {
    expect(budgetText(line('cleveland', 'heart', 3, 0.6))).toBe(
      'heart · ε 2.4 of 3 left'
    );
    expect(epsilonText(0.1 + 0.2)).toBe('0.3');
    expect(epsilonText(1 / 3)).toBe('0.333');
    expect(epsilonText(NaN)).toBe('?');
  });

  it("shows each site's own lines by dataset, and a failing site as a message", () => {
    const page = {
      budgets: [
        line('cleveland', 'heart', 3, 0.6, 4),
        line('hungary', 'heart', 1, 1, 10),
        line('cleveland', 'claims', 0.5, 0)
      ],
      errors: [{ site: 'switzerland', message: 'switzerland: cannot reach' }]
    };
    const cleveland = siteBudgets(page, 'cleveland');
    expect(cleveland.error).toBeNull();
    expect(cleveland.rows.map(r => r.text)).toEqual([
      'claims · ε 0.5 of 0.5 left',
      'heart · ε 2.4 of 3 left'
    ]);
    expect(cleveland.rows[1].title).toBe('ε 0.6 spent in 4 charges of 3');
    expect(cleveland.rows.map(r => r.spent)).toEqual([false, false]);
    expect(siteBudgets(page, 'hungary').rows[0].spent).toBe(true);
    expect(siteBudgets(page, 'switzerland')).toEqual({
      rows: [],
      error: 'budgets not available: switzerland: cannot reach'
    });
    // The Jupyter server itself failing is said under every site.
    const down = {
      budgets: [],
      errors: [{ site: 'server', message: 'HTTP 500' }]
    };
    expect(siteBudgets(down, 'cleveland').error).toBe(
      'budgets not available: HTTP 500'
    );
  });
});

describe("the researcher's DP context in a review", () => {
  const answer = (
    id: number,
    dataset: string,
    created: string,
    sql = 'SELECT 1'
  ): IDpAnswer => ({
    output_id: id,
    request_id: id,
    dataset,
    sql,
    epsilon: 0.1,
    created
  });

  it('groups spending and answers by dataset, answers newest first', () => {
    const spending = [line('x', 'claims', 1, 0), line('x', 'heart', 3, 0.2, 2)];
    const grouped = dpByDataset({
      spending,
      answers: [
        answer(4, 'heart', '2026-01-01T00:00:00Z'),
        answer(9, 'heart', '2026-01-02T00:00:00Z', 'SELECT sex, COUNT(*)'),
        answer(5, 'registry', '2026-01-01T00:00:00Z')
      ]
    });
    expect(grouped.map(g => g.dataset)).toEqual([
      'heart',
      'registry',
      'claims'
    ]);
    expect(grouped[0].answers.map(a => a.output_id)).toEqual([9, 4]);
    expect(grouped[0].answers[0].sql).toBe('SELECT sex, COUNT(*)');
    expect(spendingText(grouped[0].spending)).toBe(
      'ε 0.2 spent, 2.8 left of 3 (2 charges)'
    );
    expect(spendingText(grouped[1].spending)).toBe('no budget here');
    expect(dpByDataset({ spending: [], answers: [] })).toEqual([]);
  });
});
