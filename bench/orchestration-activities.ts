/** The trivial stage of the orchestration benchmark: the same function is called directly and as an activity. */
export interface TrivialActivities {
  trivialStage(value: number): Promise<number>;
}

export const trivialActivities: TrivialActivities = {
  async trivialStage(value: number): Promise<number> {
    return value + 1;
  },
};
